"""Stage 1's search on planted caches: how much the fit seed moves stage1-best, and what the halving rungs cost
or buy, measured on the same caches.

    python benchmarks/stage1_choices.py --fit-seeds 0,100,200               # the default, three seed streams
    python benchmarks/stage1_choices.py --fit-seeds 0 --rungs 500           # no halving before the last rung

Caches: `micro simulate` with --pairs (default 6000) x 64, both regimes, cache seeds 0..--caches-1. Each fit
is `MixtureConfig(seed=cache seed + fit seed)`; `--rungs` replaces the halving rungs (heads.search.RUNGS) (steps of 32 pairs; the
last one is where the rule selects). Prints one JSON line per fit (test stage1-best, the selected candidate,
candidate steps) and, per fit seed, the mean stage1-best per regime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate
from micro.heads import search, train as train_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit-seeds", default="0")
    p.add_argument("--rungs", default=None, help="comma-separated rungs instead of heads.search.RUNGS")
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--caches", type=int, default=5)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.rungs:
        search.RUNGS = train_module.RUNGS = tuple(int(r) for r in args.rungs.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for fit_seed in (int(s) for s in args.fit_seeds.split(",")):
            means = {}
            for regime in ("prompt", "shared"):
                scores = []
                for cache_seed in range(args.caches):
                    path = work / f"{regime}_{args.pairs}_{cache_seed}.h5"
                    if not path.exists():
                        simulate(path, regime=regime, pairs=args.pairs, seed=cache_seed)
                    train, test = load_split(path, "train"), load_split(path, "test")
                    model = fit_mixture(train, MixtureConfig(seed=cache_seed + fit_seed))
                    scores.append(evaluate(model, test, "context")["average"]["best_accuracy"])
                    rec = model.fit_record
                    print(json.dumps({"regime": regime, "cache_seed": cache_seed, "fit_seed": fit_seed, "rungs": list(search.RUNGS),
                                      "stage1_best": round(scores[-1], 4), "chosen": rec.candidates[rec.chosen],
                                      "candidate_steps": rec.candidate_steps}), flush=True)
                means[regime] = round(statistics.fmean(scores), 4)
            print(json.dumps({"fit_seed": fit_seed, "rungs": list(search.RUNGS), "mean_stage1_best": means}), flush=True)


if __name__ == "__main__":
    main()
