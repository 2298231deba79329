"""Default vs `--paper` on one cache, and the two readings of section 5.3 (what the heads score).

For each regime (default: MixtureConfig() + AdaptConfig(); paper: MixtureConfig.paper(k=preset K) +
AdaptConfig.paper(tau=preset tau)) it fits micro and the three baselines once, then adapts with the heads
scoring (prompt, response) embeddings ('response') and (context + prompt, response) ones ('context'; the
cache must be built with `micro embed --context-in-sequence`). Prints one Markdown table of Average
test accuracy (mean ± std over seeds) per method.

    python benchmarks/paper_protocol.py CACHE --workdir /tmp/pp --epochs 40 --budgets 50 --seeds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from micro import paper
from micro.embedcache import read_meta
from micro.heads import MixtureConfig, run_fit_mixture
from micro.methods import BASELINE_FITS
from micro.router import AdaptConfig, run_adapt

ROWS = ("single", "static", "ensemble-best", "hyre", "micro-hyre", "micro", "micro-refine", "budget-bt", "stage1-best")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--budgets", default="50")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir)
    budgets = [int(b) for b in args.budgets.split(",")]
    _, preset, note = paper.choose(read_meta(args.cache))
    print(note)
    extra = {"epochs": args.epochs} if args.epochs else {}
    cols, table = [], {}
    for regime in ("default", "paper"):
        runs = {}
        for method in (*BASELINE_FITS, "micro"):
            cfg = MixtureConfig.paper(method=method, k=preset.k, **extra) if regime == "paper" else MixtureConfig(method=method, **extra)
            run_fit_mixture(args.cache, work / regime / method, cfg)
            runs[method] = str(work / regime / method)
        for reading in ("response", "context"):
            stage2 = dict(budgets=budgets, seeds=args.seeds, head_input=reading,
                          baseline_runs=[runs[m] for m in BASELINE_FITS])
            acfg = AdaptConfig.paper(tau=preset.tau, **stage2) if regime == "paper" else AdaptConfig(**stage2)
            res = run_adapt(args.cache, runs["micro"], work / regime / f"adapt-{reading}", acfg)
            col = f"{regime} / {reading}"
            cols.append(col)
            at = res["summary"][str(max(budgets))]
            for m in ROWS:
                if m in at:
                    e = at[m]["Average"]
                    table.setdefault(m, {})[col] = f"{e['mean']:.3f} ± {e['std']:.3f}"
    print(f"\nAverage test accuracy at B = {max(budgets)} ({args.seeds} seeds), {args.cache}\n")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for m in ROWS:
        if m in table:
            print(f"| {m} | " + " | ".join(table[m].get(c, "-") for c in cols) + " |")


if __name__ == "__main__":
    main()
