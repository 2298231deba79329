"""micro with Hedge over each context's budget pairs (AdaptConfig.context_rate, the default 1) against the
router alone (context_rate 0, the paper's micro), on the same stage-1 fits and the same budget pairs.

    python benchmarks/context_hedge.py --regimes prompt,shared --pairs 600,1500 --dims 64 --seeds 5 --out /tmp/ch.jsonl
    python benchmarks/context_hedge.py --cache demo=micro-demo/demo.h5 --cache hs2=/tmp/hs2.h5 --seeds 3 --out /tmp/ch.jsonl
    python benchmarks/context_hedge.py --cache demo=micro-demo/demo.h5 --unseen --seeds 3 --out /tmp/ch.jsonl
    python benchmarks/context_hedge.py --table /tmp/ch.jsonl

Per cache (a planted `simulate(regime, pairs, dim, seed)` per seed, or an embedded cache fitted with stage-1
seeds 0..--seeds-1), stage 1 is fitted once with the defaults, then `run_adapt` runs twice on it at
B = 5, 10, 50 (3 budget draws on planted caches, 5 on embedded ones; the same draws for both rates):
context_rate 0 and 1. With --unseen the last attribute's pairs are left out of stage 1 and only that
attribute is scored (a context stage 1 never saw, given a budget). micro-refine's prior is micro's
weights, so it changes too. Each JSON line is one (cache, seed, rate) with stage1-best, micro,
micro-refine, budget-bt and oracle per budget; the table gives mean ± std over seeds and the mean
paired difference (rate 1 - rate 0) with how many seeds it was positive in.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from _common import add_planted_grid_options, read_rows, row_writer

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, fit_mixture, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, run_adapt

METHODS = ("stage1-best", "micro", "micro-refine", "budget-bt", "oracle")
BUDGETS = (5, 10, 50)
RATES = (0.0, 1.0)


def fit_and_adapt(label: str, cache: Path, seed: int, adapt_seed: int, adapt_seeds: int, unseen: bool, work: Path, emit) -> None:
    """Stage 1 (seed `seed`) on `cache`, then stage 2 at both rates on the same draws: one row per rate."""
    train = load_split(cache, "train")
    attrs = list(train.attributes)
    fit_on = train.subset(torch.nonzero(train.attribute != len(attrs) - 1).flatten()) if unseen else train
    config = MixtureConfig(seed=seed)
    model = fit_mixture(fit_on, config)
    run = work / "runs" / f"{label.replace(' ', '_')}_{seed}"
    save_model(model, run, {"config": config.resolved(fit_on).to_dict(), "cache": cache_identity(read_meta(cache), cache)})
    for rate in RATES:
        adapt = AdaptConfig(budgets=list(BUDGETS), seeds=adapt_seeds, seed=adapt_seed, context_rate=rate,
                            methods=["default", "-baselines"])
        results = run_adapt(cache, run, work / "out" / f"{run.name}_{rate}", adapt)
        row = {"cache": label + (" (unseen)" if unseen else ""), "seed": seed, "rate": rate}
        for b in BUDGETS:
            for m in METHODS:
                cell = results["summary"][str(b)][m]
                row[f"{m}@{b}"] = cell[attrs[-1]]["mean"] if unseen else cell["Average"]["mean"]
        emit(row)


def tables(rows: list[dict]) -> str:
    cols = [f"{m}@{b}" for b in BUDGETS for m in ("micro", "micro-refine")]
    out = ["| cache | seeds | stage1-best@50 | oracle@50 | " + " | ".join(f"{c} (rate 0 → 1)" for c in cols) + " |",
           "|---|---|---|---|" + "---|" * len(cols)]
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["cache"], {}).setdefault(r["seed"], {})[r["rate"]] = r
    for cache, by_seed in groups.items():
        pairs = [(v[0.0], v[1.0]) for v in by_seed.values() if 0.0 in v and 1.0 in v]
        if not pairs:
            continue
        mean = lambda key, i: statistics.fmean(p[i][key] for p in pairs)
        cells = []
        for c in cols:
            diffs = [p[1][c] - p[0][c] for p in pairs]
            cells.append(f"{mean(c, 0):.3f} → {mean(c, 1):.3f} ({100 * statistics.fmean(diffs):+.1f}, {sum(d > 0 for d in diffs)}/{len(diffs)})")
        out.append(f"| {cache} | {len(pairs)} | {mean('stage1-best@50', 1):.3f} | {mean('oracle@50', 1):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_planted_grid_options(p, pairs="600,1500", cache_help="an embedded cache instead of planted ones (repeatable)")
    p.add_argument("--unseen", action="store_true", help="leave the last attribute out of stage 1 and score only it")
    p.add_argument("--out", default=None, help="append one JSON line per (cache, seed, rate) here")
    p.add_argument("--table", default=None, help="only print the table of a finished --out file")
    args = p.parse_args()
    if args.table:
        print(tables(read_rows(args.table)))
        return
    torch.set_num_threads(1)
    rows: list[dict] = []
    emit = row_writer(args.out, rows)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, path in (c.split("=", 1) for c in args.cache):
            for seed in range(args.seeds):
                fit_and_adapt(label, Path(path), seed, 0, 5, args.unseen, work, emit)
        for dim in [] if args.cache else [int(d) for d in args.dims.split(",")]:
            for pairs in [int(n) for n in args.pairs.split(",")]:
                for regime in args.regimes.split(","):
                    for seed in range(args.seeds):
                        cache = work / f"{regime}_{pairs}_{dim}_{seed}.h5"
                        simulate(cache, regime=regime, pairs=pairs, dim=dim, seed=seed)
                        fit_and_adapt(f"{regime} {pairs} d{dim}", cache, seed, seed, 3, args.unseen, work, emit)
    print(tables(rows))


if __name__ == "__main__":
    main()
