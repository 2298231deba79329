"""A paired before/after table from two sets of `convergence.py --out` rows (the same caches and seeds).

    python benchmarks/paired_table.py before.jsonl[,more.jsonl] after.jsonl[,more.jsonl] [--columns stage1-best@50,micro@50]

Rows pair by (regime, pairs, dim, seed). Each cell: the mean before → after, the mean paired difference and
its 95 % t interval; a cell whose interval lies below 0 is marked **loss**. The last column is the mean CPU
seconds of the stage-1 fits.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import stats

COLUMNS = ("stage1-best@50", "micro@10", "micro@50", "micro-refine@50")


def rows(paths: str) -> dict:
    """{(regime, pairs, dim, seed): row} of comma-separated JSON-lines files (a later row wins)."""
    out = {}
    for path in paths.split(","):
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["regime"], r["pairs"], r["dim"], r["seed"])] = r
    return out


def cell(before: list[float], after: list[float]) -> str:
    diffs = [a - b for a, b in zip(after, before)]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    flag = " **loss**" if mean + half < 0 else ""
    return f"{statistics.fmean(before):.3f} → {statistics.fmean(after):.3f} ({mean:+.3f}, [{mean - half:+.3f}, {mean + half:+.3f}]){flag}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--columns", default=",".join(COLUMNS))
    args = p.parse_args()
    columns = args.columns.split(",")
    before, after = rows(args.before), rows(args.after)
    cells: dict = {}
    for key in sorted(set(before) & set(after)):
        cells.setdefault(key[:3], []).append((before[key], after[key]))
    print("| cache | seeds | " + " | ".join(f"{c}: before → after (Δ, 95 % CI)" for c in columns) + " | fit CPU s |")
    print("|---|---|" + "---|" * len(columns) + "---|")
    for (regime, pairs, dim), pair in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        text = [cell([b[c] for b, _ in pair], [a[c] for _, a in pair]) for c in columns]
        seconds = f"{statistics.fmean(b['fit_cpu_s'] for b, _ in pair):.1f} → {statistics.fmean(a['fit_cpu_s'] for _, a in pair):.1f}"
        print(f"| {regime} {pairs} × {dim} | {len(pair)} | " + " | ".join(text) + f" | {seconds} |")


if __name__ == "__main__":
    main()
