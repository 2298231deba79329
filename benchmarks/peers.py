"""Peer methods beside micro: every `micro adapt` method, the peers included, at B = 5, 10, 25, 50 per group,
and random vs active acquisition for micro and micro-refine, on planted caches (isotropic differences, and
with --spread pairs that vary along their group's direction); and, with --lore-fit, lore's basis fit in the
full space against the fit in a subspace (router/peers.py), seconds and accuracy. docs/peers.md has the numbers.

    python benchmarks/peers.py --out /tmp/peers.md                     # 2 regimes x (spread 0, 4), 5 seeds
    python benchmarks/peers.py --pairs 900 --dim 12 --seeds 2 --spreads 0   # a smoke run: ~2 min
    python benchmarks/peers.py --out /tmp/peers.md --demo-cache /tmp/demo.h5 [--hs2-cache /tmp/hs2.h5]
    micro simulate --dim 3072 --pairs 23500 --seed 1 --out /tmp/p3072.h5
    python benchmarks/peers.py --lore-fit /tmp/p3072.h5 --project none,128   # ~20 min: the full-space fit

Per planted regime and spread: one `simulate(regime=..., dim=64, pairs=..., spread=...)` cache (seed 0); per
real cache (MiniLM caches of the demo data and of the HelpSteer2 subset, if given) that cache. One default
stage-1 fit per cache (`MixtureConfig()`; the demo with DemoConfig's stage-1 epochs); then `run_adapt` with 5
seeds (budget draws) at every budget, once with the default methods and the peers (random acquisition), once
per active rule (micro and micro-refine only), and once with drm keeping every principal direction
(diagnostic). The budget pairs and test pairs of a `run_adapt` call are the same for every method. Cells:
mean ± sample std over the 5 seeds of the per-seed average over groups.

--lore-fit CACHE: `fit_lore` (rank 4, 300 steps, lr 0.05: the `lore` defaults) on the cache's train split
once per --project value (none: the full space), each timed (wall and CPU seconds on --threads threads), then
scored on the test split: the training groups' own weights ("seen"), and new users' weights fitted on B = 10
and 50 of a group's training pairs (3 draws per group, seeded), with the basis frozen.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from _common import add_output_options, finish, start_clock, work_folder
from micro.demo.pipeline import DemoConfig
from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, run_fit_mixture, simulate
from micro.methods import REGISTRY
from micro.router import AdaptConfig, run_adapt
from micro.router.peers import fit_lore, fit_lore_users

REGIMES = ("prompt", "shared")
BUDGETS = [5, 10, 25, 50]
RULES = ("random", "uncertainty", "disagreement")


def cell(entry: dict | None) -> str:
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}" if entry else "-"


def run_cache(name: str, cache: Path, stage1: MixtureConfig, seeds: int, work: Path) -> dict:
    """{rule (and 'drm-all'): run_adapt summary} for one cache."""
    run_fit_mixture(cache, work / f"{name}-run", stage1, overwrite=True)
    sweep = dict(budgets=BUDGETS, seeds=seeds)
    configs = {rule: AdaptConfig(**sweep, acquire=rule, methods=["default", "peers"] if rule == "random" else ["micro", "micro-refine"])
               for rule in RULES}
    configs["drm-all"] = AdaptConfig(**sweep, methods=["drm"], options={"drm": {"components": int(read_meta(cache)["hidden_size"])}})
    out = {}
    for row, cfg in configs.items():
        t = time.perf_counter()
        out[row] = run_adapt(cache, work / f"{name}-run", work / f"{name}-{row}", cfg, overwrite=True,
                             plot=False, save_routers=False)["summary"]
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
        lines.append(f"| DRM, every principal direction (diagnostic) | {'yes' if REGISTRY['drm'].needs_group_labels else 'no'} | "
                     + " | ".join(cell(by_rule["drm-all"][str(b)]["drm"].get("Average")) for b in BUDGETS) + " |")
        lines += ["", f"{regime}, acquisition rule vs budget (same stage-1 run, same seeds):", "",
                  "| method | acquire | " + " | ".join(f"B = {b}" for b in BUDGETS) + " |", "|---|---|" + "---|" * len(BUDGETS)]
        for m in ("micro", "micro-refine"):
            for rule in RULES:
                lines.append(f"| {REGISTRY[m].label} | {rule} | "
                             + " | ".join(cell(by_rule[rule][str(b)][m].get("Average")) for b in BUDGETS) + " |")
        lines.append("")
    return "\n".join(lines)


def lore_fit_table(cache: str, projects: list[int | None]) -> str:
    """One row per --project value: fit seconds (wall, CPU) and test accuracy (seen weights, new users at B = 10, 50)."""
    train, test = load_split(cache, "train"), load_split(cache, "test")
    groups = sorted(set(train.attribute.tolist()))
    lines = [f"lore on {cache} (train {tuple(train.diff.shape)}; rank 4, 300 steps, lr 0.05):", "",
             "| fit | wall s | CPU s | seen | new users B = 10 | B = 50 |", "|---|---|---|---|---|---|"]
    for project in projects:
        wall, cpu = time.perf_counter(), time.process_time()
        model = fit_lore(train.diff, train.attribute, 4, steps=300, lr=0.05, seed=0, project=project)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        seen = sum(float((model.margins(test.diff[test.attribute == g], model.logits[g]) > 0).float().mean()) for g in groups) / len(groups)
        users = []
        for budget in (10, 50):
            gen = torch.Generator().manual_seed(1)
            draws = [(g, torch.nonzero(train.attribute == g).flatten()) for _ in range(3) for g in groups]
            diff = torch.stack([train.diff[rows[torch.randperm(len(rows), generator=gen)[:budget]]] for _, rows in draws])
            weights = fit_lore_users(model, diff, steps=300, lr=0.05)
            users.append(sum(float((model.margins(test.diff[test.attribute == g], w) > 0).float().mean())
                             for (g, _), w in zip(draws, weights)) / len(draws))
        name = "full space" if project is None else f"subspace, q = {project}"
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {seen:.4f} | {users[0]:.4f} | {users[1]:.4f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--spreads", default="0,4", help="SimulateConfig.spread of the planted caches, comma-separated")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--demo-cache", default=None, help="MiniLM cache of the demo data (`micro embed demo --model minilm`)")
    p.add_argument("--hs2-cache", default=None, help="MiniLM cache of the HelpSteer2 subset")
    p.add_argument("--lore-fit", default=None, metavar="CACHE", help="only time and score lore's basis fit on CACHE")
    p.add_argument("--project", default="none,128", help="with --lore-fit: fit_lore's `project` values (none: full space)")
    add_output_options(p)
    args = p.parse_args()
    start = start_clock(args)
    if args.lore_fit:
        projects = [None if v.strip() == "none" else int(v) for v in args.project.split(",")]
        finish(lore_fit_table(args.lore_fit, projects), args, start)
        return
    with work_folder(args) as work:
        caches = {}
        for regime in REGIMES:
            for spread in (float(s) for s in args.spreads.split(",")):
                name = f"planted '{regime}'" + (f", spread {spread:g}" if spread else "")
                path = work / f"{regime}-s{spread:g}.h5"
                simulate(path, regime=regime, pairs=args.pairs, dim=args.dim, seed=0, spread=spread, overwrite=True)
                caches[name] = (path, MixtureConfig(seed=0))
        if args.demo_cache:
            caches["demo (MiniLM)"] = (Path(args.demo_cache), MixtureConfig(seed=0, epochs=DemoConfig().stage1_epochs))
        if args.hs2_cache:
            caches["HelpSteer2 subset (MiniLM)"] = (Path(args.hs2_cache), MixtureConfig(seed=0))
        results = {name: run_cache(f"c{i}", cache, stage1, args.seeds, work)
                   for i, (name, (cache, stage1)) in enumerate(caches.items())}
    finish(tables(results) + f"\nPlanted: {args.pairs} pairs, d = {args.dim}, G = 3; K = 10, {args.seeds} stage-2 seeds; ",
           args, start)


if __name__ == "__main__":
    main()
