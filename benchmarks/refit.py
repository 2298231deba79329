"""The refit after early stopping, on and off, side by side on the same caches (one fit each, one thread):

    python benchmarks/refit.py

Per cache (a HelpSteer2-shaped one as in fit_step_speed.py, planted 23.5K-pair caches at d = 3072 and 64,
a 6K-pair one at d = 64): `fit_mixture(MixtureConfig(refit=...))`, printing CPU seconds, steps (search +
refit), routed and best-head test accuracy and the smallest cosine between a planted direction and its
matched head. One JSON line per fit.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, match_heads, simulate

CASES = [("hs2-shaped", dict(groups=5, dim=3072, pairs=26100, pairs_per_prompt=3, test_fraction=0.1)),
         ("prompt-23.5K-3072-s0", dict(regime="prompt", pairs=23500, dim=3072, seed=0)),
         ("shared-23.5K-3072-s0", dict(regime="shared", pairs=23500, dim=3072, seed=0)),
         ("shared-23.5K-64-s0", dict(regime="shared", pairs=23500, dim=64, seed=0)),
         ("prompt-6K-64-s0", dict(regime="prompt", pairs=6000, dim=64, seed=0))]


def main() -> None:
    torch.set_num_threads(1)
    for name, kw in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cache.h5"
            truth = simulate(path, **kw)
            train, test = load_split(path, "train"), load_split(path, "test")
            for refit in (True, False):
                t = time.process_time()
                model = fit_mixture(train, MixtureConfig(refit=refit))
                seconds = time.process_time() - t
                res, rec = evaluate(model, test, "context")["average"], model.fit_record
                print(json.dumps({"cache": name, "refit": refit, "cpu_s": round(seconds, 2), "steps": rec.steps + rec.refit_steps,
                                  "routed": round(res["routed_accuracy"], 4), "best": round(res["best_accuracy"], 4),
                                  "head_cos": round(min(match_heads(truth, model.head_vectors())["cosine"]), 3)}), flush=True)


if __name__ == "__main__":
    main()
