"""Peer methods and active acquisition side by side: every `micro adapt` method at B = 5, 10, 25, 50 per
group, and random vs active acquisition for micro and micro-refine, on planted caches of both regimes.

    python benchmarks/peers.py --out /tmp/peers.md       # 2 planted regimes, 5 stage-2 seeds, ~1 min on 2 cores
    micro embed demo --model minilm --out /tmp/demo.h5
    python benchmarks/peers.py --out /tmp/peers.md --demo-cache /tmp/demo.h5 [--hs2-cache /tmp/hs2.h5]

Per planted regime: one `simulate(regime=..., dim=64, pairs=...)` cache (seed 0); per real cache (MiniLM
caches of the demo data and of the HelpSteer2 subset, if given) that cache. One default stage-1 fit per
cache (`MixtureConfig()`, K = 10; the demo with DemoConfig's stage-1 epochs); then `run_adapt` with 5
seeds (budget draws) at every budget, once with all methods and the stage-1 baselines (random
acquisition), once per active rule (baselines off), and once with drm keeping every principal direction
(diagnostic). The budget pairs and test pairs of a `run_adapt` call are the same for every method.
Cells: mean ± sample std over the 5 seeds of the per-seed average over groups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import add_output_options, finish, start_clock, work_folder
from micro.demo.pipeline import DemoConfig
from micro.embedcache import read_meta
from micro.heads import MixtureConfig, run_fit_mixture, simulate
from micro.methods import REGISTRY
from micro.router import AdaptConfig, run_adapt

REGIMES = ("prompt", "shared")
BUDGETS = [5, 10, 25, 50]
RULES = ("random", "uncertainty", "disagreement")


def cell(entry: dict | None) -> str:
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}" if entry else "-"


def run_cache(name: str, cache: Path, stage1: MixtureConfig, seeds: int, work: Path) -> dict:
    """{rule (and 'drm-all'): run_adapt summary} for one cache."""
    run_fit_mixture(cache, work / f"{name}-run", stage1, overwrite=True)
    sweep = dict(budgets=BUDGETS, seeds=seeds, plot=False, save_routers=False)
    configs = {rule: AdaptConfig(**sweep, acquire=rule, baselines=rule == "random") for rule in RULES}
    configs["drm-all"] = AdaptConfig(**sweep, baselines=False, drm_components=int(read_meta(cache)["hidden_size"]))
    out = {}
    for row, cfg in configs.items():
        t = time.perf_counter()
        out[row] = run_adapt(cache, work / f"{name}-run", work / f"{name}-{row}", cfg, overwrite=True)["summary"]
        print(f"{name} {row}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    return out


def tables(results: dict) -> str:
    lines = []
    for regime, by_rule in results.items():
        summary = by_rule["random"]
        methods = [m for m in REGISTRY if any(m in summary[str(b)] for b in BUDGETS)]
        lines += [f"{regime}, random acquisition: average accuracy by budget B (pairs per group).", "",
                  "| method | needs group labels | " + " | ".join(f"B = {b}" for b in BUDGETS) + " |",
                  "|---|---|" + "---|" * len(BUDGETS)]
        for m in methods:
            cells = [cell(summary[str(b)].get(m, {}).get("Average")) for b in BUDGETS]
            if REGISTRY[m].block != "budget":  # budget-free: the same value in every column
                cells = [cells[0]] + ["″"] * (len(BUDGETS) - 1)
            lines.append(f"| {REGISTRY[m].label} | {'yes' if REGISTRY[m].needs_group_labels else 'no'} | " + " | ".join(cells) + " |")
        lines.append("| DRM, every principal direction (diagnostic) | yes | "
                     + " | ".join(cell(by_rule["drm-all"][str(b)]["drm"].get("Average")) for b in BUDGETS) + " |")
        lines += ["", f"{regime}, acquisition rule vs budget (same stage-1 run, same seeds):", "",
                  "| method | acquire | " + " | ".join(f"B = {b}" for b in BUDGETS) + " |", "|---|---|" + "---|" * len(BUDGETS)]
        for m in ("micro", "micro-refine"):
            for rule in RULES:
                lines.append(f"| {REGISTRY[m].label} | {rule} | "
                             + " | ".join(cell(by_rule[rule][str(b)][m].get("Average")) for b in BUDGETS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--demo-cache", default=None, help="MiniLM cache of the demo data (`micro embed demo --model minilm`)")
    p.add_argument("--hs2-cache", default=None, help="MiniLM cache of the HelpSteer2 subset")
    add_output_options(p)
    args = p.parse_args()
    start = start_clock(args)
    with work_folder(args) as work:
        caches = {}
        for regime in REGIMES:
            caches[f"planted '{regime}'"] = (work / f"{regime}.h5", MixtureConfig(seed=0))
            simulate(caches[f"planted '{regime}'"][0], regime=regime, pairs=args.pairs, dim=args.dim, seed=0, overwrite=True)
        if args.demo_cache:
            caches["demo (MiniLM)"] = (Path(args.demo_cache), MixtureConfig(seed=0, epochs=DemoConfig().stage1_epochs))
        if args.hs2_cache:
            caches["HelpSteer2 subset (MiniLM)"] = (Path(args.hs2_cache), MixtureConfig(seed=0))
        results = {name: run_cache(name.split()[0] + str(i), cache, stage1, args.seeds, work)
                   for i, (name, (cache, stage1)) in enumerate(caches.items())}
    finish(tables(results) + f"\nPlanted: {args.pairs} pairs, d = {args.dim}, G = 3; K = 10, {args.seeds} stage-2 seeds; ",
           args, start)


if __name__ == "__main__":
    main()
