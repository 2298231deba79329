"""What a stage-1 fit costs, on planted caches of three sizes:

    python benchmarks/stage1_cost.py                          # tiny, small, big; default and plain
    python benchmarks/stage1_cost.py --cases big --configs default --threads 1

Cases (`micro simulate`, 'prompt' regime): tiny = 600 pairs x 64 (480 training pairs, seed 3), small = 6,000
x 64 (4,800, seed 3), big = 23,500 x 3,072 (18,800, seed 1). Configs: `default` = MixtureConfig() (the
candidates, halving, selection and refit), `plain` = one candidate (restarts 1, head scale 1, no alternative
regulariser weight): "one plain early-stopped start". Prints one JSON line per fit: wall seconds of the fit,
the fit record's candidate steps and its time over its own matrix products (`time_vs_matmul`), and the
routed test accuracy; then, per case, the default's candidate steps and seconds over the plain fit's.
Caches are kept in --workdir (default: a temporary folder). Run it with the code of another commit on
PYTHONPATH to compare (records from before the fit record carried its cost print null there).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate

CASES = {"tiny": dict(pairs=600, dim=64, seed=3), "small": dict(pairs=6000, dim=64, seed=3), "big": dict(pairs=23500, dim=3072, seed=1)}
CONFIGS = {"default": {}, "plain": {"restarts": 1, "head_init": (1.0,), "alpha_alternatives": ()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own setting)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in args.cases.split(","):
            path = work / f"{case}.h5"
            if not path.exists():
                simulate(path, regime="prompt", **CASES[case])
            train, test = load_split(path, "train"), load_split(path, "test")
            rows = {}
            for name in args.configs.split(","):
                start = time.perf_counter()
                model = fit_mixture(train, MixtureConfig(seed=CASES[case]["seed"], **CONFIGS[name]))
                seconds = time.perf_counter() - start
                rec = model.fit_record
                rows[name] = {"case": case, "config": name, "train_pairs": len(train), "threads": torch.get_num_threads(),
                              "seconds": round(seconds, 2), "candidate_steps": getattr(rec, "candidate_steps", None),
                              "time_vs_matmul": getattr(rec, "time_vs_matmul", None), "steps": rec.steps, "refit_steps": rec.refit_steps,
                              "routed_accuracy": round(evaluate(model, test, "context")["average"]["routed_accuracy"], 4)}
                print(json.dumps(rows[name]), flush=True)
            if {"default", "plain"} <= set(rows) and rows["plain"]["candidate_steps"]:
                d, q = rows["default"], rows["plain"]
                print(json.dumps({"case": case, "steps_default_over_plain": round(d["candidate_steps"] / q["candidate_steps"], 2),
                                  "seconds_default_over_plain": round(d["seconds"] / q["seconds"], 2)}), flush=True)


if __name__ == "__main__":
    main()
