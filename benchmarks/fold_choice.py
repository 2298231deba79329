"""Which start one held-out slice and the pooled folds choose, against how good each start is.

    python benchmarks/fold_choice.py --regime prompt --pairs 600 --dim 64 --seeds 0,1,2,3,4

For each planted cache (`simulate`, cache seed = fit seed) prints one JSON line:
- `slice_nll` / `folds_nll`: each start's restart criterion (the calibrated held-out NLL at its best
  weights, at the point where the best start is chosen) on the one held-out slice of early stopping, and
  pooled over the 5 folds of prompts of `heads/fit.py` (every training pair held out once);
- `slice_choice` / `folds_choice`: the start each one keeps (`scale_choice`, with its bar for a start of a
  later head scale);
- `head_cos` / `stage1_best`: each start trained to the end on its own (the one-slice search, then the
  refit on every pair): the mean cosine between a planted direction and its matched head, and the best
  head's test accuracy per group, averaged. Starts 0-3 have the usual head scale, 4-7 start near zero.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, match_heads, simulate
from micro.heads.fit import fold_splits, prompt_folds
from micro.heads.train import _fit, scale_choice, start_scales


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regime", default="prompt")
    p.add_argument("--pairs", type=int, default=600)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2,3,4")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "planted.h5"
            truth = simulate(cache, regime=args.regime, pairs=args.pairs, dim=args.dim, seed=seed)
            train, test = load_split(cache, "train"), load_split(cache, "test")
        config = MixtureConfig(seed=seed).resolved(train)
        scales = start_scales(config)
        n = len(train)

        def choose(values: torch.Tensor) -> int:
            return scale_choice(values.mean(1).tolist(), scales, lambda r: values[r], config.scale_choice_z)[0]

        one = _fit(train, config, None, until_choice=True)
        splits = fold_splits(n, prompt_folds(train, config.folds, config.seed))
        pooled = torch.cat([_fit(train, config, None, split=split, until_choice=True) for split in splits], dim=1)
        cos, best = [], []
        for r in range(len(scales)):
            model = _fit(train, replace(config, folds=1), None, only_start=r)
            cos.append(round(float(np.mean(match_heads(truth, model.head_vectors())["cosine"])), 3))
            best.append(round(evaluate(model, test, config.router_input)["average"]["best_accuracy"], 4))
        print(json.dumps({"regime": args.regime, "pairs": args.pairs, "dim": args.dim, "seed": seed, "scales": scales,
                          "slice_pairs": one.shape[1], "slice_nll": [round(float(v), 4) for v in one.mean(1)], "slice_choice": choose(one),
                          "folds_nll": [round(float(v), 4) for v in pooled.mean(1)], "folds_choice": choose(pooled),
                          "head_cos": cos, "stage1_best": best}), flush=True)


if __name__ == "__main__":
    main()
