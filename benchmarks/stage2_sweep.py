"""The paper's stage-2 sweep, timed and scored side by side with another version of micro.

    micro simulate --out big.h5 --dim 3072 --pairs 23500 --seed 1 && micro fit-mixture big.h5 --out run
    git worktree add /tmp/before <commit>; mkdir -p /tmp/b && ln -s /tmp/before /tmp/b/micro
    python benchmarks/stage2_sweep.py big.h5 run --before /tmp/b --rounds 2 --after-methods default --after-methods all

Each round runs `micro adapt CACHE RUN --budgets 5,10,25,50,100,150 --seeds 5` (other budgets with --budgets) once with this checkout for
each `--after-methods` value and once with the code on `--before` (a folder whose `micro` is the other
version; omit it to time this checkout alone), in turn, each into a fresh output folder (the stage-1
baselines are fitted every time). Prints one JSON line per run (wall seconds, results.json's `timings_s`),
then the median wall seconds per version and a paired before/after accuracy table: per (budget, method) the
mean over the 5 seeds before → after and the 95 % t interval of the per-seed differences.

With --fit, RUN is not read: each version first fits stage 1 on CACHE with its own `micro fit-mixture` (the
defaults) and sweeps on that run, so the table compares both stages, e.g. on a cache with contexts:

    python benchmarks/stage2_sweep.py demo.h5 - --fit --budgets 5,10,25,50 --before /tmp/b
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

BUDGETS = "5,10,25,50,100,150"


def micro(args: list[str], pythonpath: str | None) -> None:
    """`micro ARGS` in a subprocess with the version on `pythonpath` (None: this checkout)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    subprocess.run([sys.executable, "-c", "from micro.cli import main; main()", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def sweep(cache: str, run: str, out: Path, pythonpath: str | None, methods: str | None, budgets: str = BUDGETS) -> dict:
    """One `micro adapt` run in a subprocess; its wall seconds and results."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["adapt", cache, run, "--out", str(out), "--budgets", budgets, "--seeds", "5", "--json"] + (["--methods", methods] if methods else [])
    start = time.perf_counter()
    micro(args, pythonpath)
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "results": json.loads((out / "results.json").read_text())}


def per_seed(results: dict) -> dict:
    """{(budget, method): {seed: average accuracy over attributes}}."""
    by: dict = {}
    for r in results["records"]:
        by.setdefault((r["budget"], r["method"]), {}).setdefault(r["seed"], []).append(r["accuracy"])
    return {k: {s: sum(v) / len(v) for s, v in seeds.items()} for k, seeds in by.items()}


def paired(before: dict, after: dict) -> list[str]:
    rows = ["| budget | method | before → after (Δ, 95 % CI) |", "|---|---|---|"]
    a, b = per_seed(before), per_seed(after)
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1])):
        seeds = sorted(set(a[key]) & set(b[key]))
        d = [b[key][s] - a[key][s] for s in seeds]
        mean = statistics.fmean(d)
        half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
        rows.append(f"| {key[0]} | {key[1]} | {statistics.fmean(a[key].values()):.4f} → {statistics.fmean(b[key].values()):.4f} "
                    f"({mean:+.4f}, [{mean - half:+.4f}, {mean + half:+.4f}]) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cache")
    p.add_argument("run")
    p.add_argument("--before", default=None, help="a folder holding the other version as `micro` (PYTHONPATH)")
    p.add_argument("--after-methods", action="append", default=None, help="--methods of this checkout's runs (repeatable; default: its default)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--budgets", default=BUDGETS)
    p.add_argument("--fit", action="store_true", help="each version fits stage 1 on CACHE first (RUN is not read)")
    args = p.parse_args()
    versions = [(f"after {m or 'default'}", None, m) for m in (args.after_methods or [None])]
    if args.before:
        versions.append(("before", args.before, None))
    walls: dict = {name: [] for name, _, _ in versions}
    last: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: args.run for name, _, _ in versions}
        if args.fit:
            for name, path, _ in versions:
                runs[name] = str(Path(tmp) / f"run-{name.replace(' ', '-')}")
                micro(["fit-mixture", args.cache, "--out", runs[name]], path)
        for r in range(args.rounds):
            for name, path, methods in versions:
                res = sweep(args.cache, runs[name], Path(tmp) / "out", path, methods, args.budgets)
                walls[name].append(res["wall_s"])
                last[name] = res["results"]
                print(json.dumps({"round": r, "version": name, "wall_s": res["wall_s"], "timings_s": res["results"]["timings_s"]}), flush=True)
    for name, values in walls.items():
        print(json.dumps({"version": name, "median_wall_s": statistics.median(values), "runs": values}))
    if "before" in last:
        print("\n".join(paired(last["before"], last[versions[0][0]])))


if __name__ == "__main__":
    main()
