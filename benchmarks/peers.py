"""Peer methods and active acquisition side by side: every `micro adapt` method at B = 5, 10, 25, 50 per
group, and random vs active acquisition for micro and micro-refine, on planted caches of both regimes.

    python benchmarks/peers.py --out /tmp/peers.md       # 2 regimes, 5 stage-2 seeds, a few minutes on 2 cores

Per regime: one `simulate(regime=..., dim=64, pairs=...)` cache (seed 0) and one default stage-1 fit
(`MixtureConfig()`, K = 10); then `run_adapt` with 5 seeds (budget draws) at every budget, once with all
methods and the stage-1 baselines (random acquisition), once per active rule (baselines off). The
budget pairs and test pairs of a `run_adapt` call are the same for every method. Cells: mean ± sample
std over the 5 seeds of the per-seed average over groups.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from micro.heads import MixtureConfig, run_fit_mixture, simulate
from micro.methods import REGISTRY
from micro.router import AdaptConfig, run_adapt

REGIMES = ("prompt", "shared")
BUDGETS = [5, 10, 25, 50]
RULES = ("random", "uncertainty", "disagreement")


def cell(entry: dict | None) -> str:
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}" if entry else "-"


def run_regime(regime: str, pairs: int, dim: int, seeds: int, work: Path) -> dict:
    """{rule: run_adapt summary} for one regime's cache."""
    cache = work / f"{regime}.h5"
    simulate(cache, regime=regime, pairs=pairs, dim=dim, seed=0, overwrite=True)
    run_fit_mixture(cache, work / f"{regime}-run", MixtureConfig(seed=0), overwrite=True)
    out = {}
    for rule in RULES:
        t = time.perf_counter()
        cfg = AdaptConfig(budgets=BUDGETS, seeds=seeds, acquire=rule, baselines=rule == "random", plot=False, save_routers=False)
        out[rule] = run_adapt(cache, work / f"{regime}-run", work / f"{regime}-{rule}", cfg, overwrite=True)["summary"]
        print(f"{regime} {rule}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    return out


def tables(results: dict) -> str:
    lines = []
    for regime, by_rule in results.items():
        summary = by_rule["random"]
        methods = [m for m in REGISTRY if any(m in summary[str(b)] for b in BUDGETS)]
        lines += [f"Regime '{regime}', random acquisition: average accuracy by budget B (pairs per group).", "",
                  "| method | needs group labels | " + " | ".join(f"B = {b}" for b in BUDGETS) + " |",
                  "|---|---|" + "---|" * len(BUDGETS)]
        for m in methods:
            cells = [cell(summary[str(b)].get(m, {}).get("Average")) for b in BUDGETS]
            if REGISTRY[m].block != "budget":  # budget-free: the same value in every column
                cells = [cells[0]] + ["″"] * (len(BUDGETS) - 1)
            lines.append(f"| {REGISTRY[m].label} | {'yes' if REGISTRY[m].needs_group_labels else 'no'} | " + " | ".join(cells) + " |")
        lines += ["", f"Regime '{regime}', acquisition rule vs budget (same stage-1 run, same seeds):", "",
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
    p.add_argument("--out", default=None, help="also write the Markdown tables here")
    p.add_argument("--workdir", default=None, help="keep caches and runs here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        results = {regime: run_regime(regime, args.pairs, args.dim, args.seeds, work) for regime in REGIMES}
    text = tables(results) + (f"\n{args.pairs} pairs, d = {args.dim}, G = 3, K = 10, {args.seeds} stage-2 seeds; "
                              f"{time.perf_counter() - start:.0f} s on {args.threads} thread(s).\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
