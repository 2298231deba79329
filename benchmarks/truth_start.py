"""Where stage 1 loses to the oracle on a planted high-dimensional cache: a fit started at the planted truth.

    python benchmarks/truth_start.py --regime prompt --pairs 23500 --dim 3072 --seed 0 --batch 32,0

For one planted cache (`simulate`) and each batch size (0 = the default, `MixtureConfig().batch_size`
None), prints one JSON line per fit with stage1-best (per group, the best head's test accuracy, averaged)
and the held-out NLL the early stopping kept:
- `oracle`: a BT head per group on that group's training pairs (`fit_oracle_head`, L2 chosen on a hold-out);
- `truth`: the planted directions themselves as heads (no fit);
- `fit`: the default early-stopping fit without the refit (its kept weights are what the held-out NLL chose);
- `from truth`: the same fit with one start, the heads initialised at the planted directions (scaled as
  planted) and the router from `fit`, with the held-out NLL curve of its first evaluations.
If `from truth` keeps a much lower held-out NLL than `fit` and its curve rises as it trains, better
weights exist under the fit's own criterion and the step noise carries the fit away from them.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, fit_mixture, match_heads, simulate
from micro.heads.train import _fit
from micro.router.baselines import fit_oracle_head


def stage1_best(heads: torch.Tensor, test) -> float:
    margins = test.diff @ heads.T
    groups = range(len(test.attributes))
    return sum(float((margins[test.attribute == a] > 0).float().mean(0).max()) for a in groups) / len(groups)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regime", default="prompt")
    p.add_argument("--pairs", type=int, default=23500)
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", default="32,0", help="batch sizes to fit with, comma-separated (0: the default)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "planted.h5"
        truth = simulate(cache, regime=args.regime, pairs=args.pairs, dim=args.dim, seed=args.seed)
        train, test = load_split(cache, "train"), load_split(cache, "test")
    head = {"regime": args.regime, "pairs": args.pairs, "dim": args.dim, "seed": args.seed}
    oracle = []
    for a in range(len(train.attributes)):
        h, _ = fit_oracle_head(train.diff[train.attribute == a], (1e-3, 1e-2, 1e-1, 1.0))
        oracle.append(float(((test.diff[test.attribute == a] @ h) > 0).float().mean()))
    planted = torch.tensor(truth.directions * truth.scale, dtype=torch.float32)
    print(json.dumps({**head, "oracle": round(sum(oracle) / len(oracle), 4), "truth": round(stage1_best(planted, test), 4)}), flush=True)
    for batch in (int(b) for b in args.batch.split(",")):
        config = MixtureConfig(seed=args.seed, refit=False, batch_size=batch or None).resolved(train)
        t = time.process_time()
        fitted = fit_mixture(train, config)
        row = {**head, "batch": config.batch_size, "fit": {"stage1_best": round(stage1_best(fitted.head_vectors().detach(), test), 4),
               "heldout_nll": fitted.fit_record.best_heldout_nll, "best_step": fitted.fit_record.best_step,
               "head_cos": round(min(match_heads(truth, fitted.head_vectors())["cosine"]), 3), "cpu_s": round(time.process_time() - t, 1)}}
        start = copy.deepcopy(fitted)
        with torch.no_grad():  # planted heads (minus the frozen prior), the other heads near zero
            g = truth.groups
            start.heads[g:] *= 0.01
            start.heads[:g] = planted - start.prior[:g]
        from_truth = _fit(train, replace(config, restarts=1), None, init=start)
        record = from_truth.fit_record
        row["from truth"] = {"stage1_best": round(stage1_best(from_truth.head_vectors().detach(), test), 4),
                             "heldout_nll": record.best_heldout_nll, "best_step": record.best_step,
                             "head_cos": round(min(match_heads(truth, from_truth.head_vectors())["cosine"]), 3),
                             "curve": [(c["step"], round(min(c["heldout_nll"]), 4)) for c in record.curve[:8]]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
