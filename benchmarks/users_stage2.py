"""Stage 2 for users who bring no context (docs/results.md, "Users without context"): accuracy after B pairs
per user, for users stage 1 saw and for users it never saw.

    python benchmarks/users_stage2.py --workdir /tmp/u2 --out /tmp/u2/users_stage2.md
    python benchmarks/users_stage2.py --data planted --budgets 5,50 --seeds 2   # a quick look

Data sets, all without contexts (the attribute is the user):
 - planted: `simulate(regime="shared", groups=4, pairs=6000, dim=64, seed=0, contexts=False)`: every group
   labels the same triples with its own direction, so nothing but the id tells the groups apart;
 - demo: the built-in demo table with its context column emptied (8 groups), embedded with the packaged MiniLM;
 - hs2: the HelpSteer2 subset (/work/shared/data/helpsteer2_subset) with its context column emptied (the 5
   rated attributes are the users), MiniLM. --demo-cache / --hs2-cache reuse caches built before.
Seen users: one stage-1 fit with the defaults (seed 0, user logits), then `run_adapt` at --budgets x --seeds
with micro, micro-refine, budget-bt, lore, lore-seen and oracle. Unseen users, leave one group out: per group
g a stage-1 fit (same config) on the training pairs of the other groups, written as a run; `run_adapt` of
that run on the whole cache with micro and micro-refine (same budgets and draws), scoring group g only.
Each cell: the mean over groups per budget seed, then mean ± std over the seeds. lore scores each user with a
basis learned on the other half of the groups (LoRe's unseen users); lore-seen's basis saw every group.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import add_output_options, finish, start_clock, work_folder
from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, fit_mixture, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity, run_fit_mixture
from micro.router import AdaptConfig, run_adapt

SEEN = ("micro", "micro-refine", "budget-bt", "lore", "lore-seen", "oracle")
UNSEEN = ("micro", "micro-refine")
ROWS = ("micro seen", "micro unseen", "micro-refine seen", "micro-refine unseen", "budget-bt", "lore (unseen)",
        "lore-seen", "oracle")


def text_cache(name: str, source: str, path: str | None, work: Path) -> Path:
    """`source`'s table with its context column emptied, embedded with the packaged MiniLM into WORK/NAME-nc.h5."""
    from micro.data import load_preferences, table_sha256
    from micro.embedcache import embed_table

    out = work / f"{name}-nc.h5"
    table = (load_preferences(source, path=path) if path else load_preferences(source)).assign(context=None)
    embed_table(table, model="minilm", out=out, source_sha256=table_sha256(table), log=lambda *a: None)
    return out


def per_seed(results: dict, methods, only: str | None = None) -> dict[tuple[int, str], dict[int, float]]:
    """{(budget, method): {seed: mean accuracy over the attributes (or `only`)}}."""
    by: dict = {}
    for r in results["records"]:
        if r["method"] in methods and (only is None or r["attribute"] == only):
            by.setdefault((r["budget"], r["method"]), {}).setdefault(r["seed"], []).append(r["accuracy"])
    return {k: {s: statistics.fmean(v) for s, v in seeds.items()} for k, seeds in by.items()}


def one_data_set(cache: Path, work: Path, budgets: list[int], seeds: int) -> dict[tuple[int, str], dict[int, float]]:
    """{(budget, row name): {seed: accuracy}} of one cache: the seen run and one left-out run per group."""
    adapt = lambda methods: AdaptConfig(budgets=budgets, seeds=seeds, methods=list(methods))  # noqa: E731
    run = work / "seen"
    if not (run / "model.safetensors").exists():
        run_fit_mixture(cache, run, MixtureConfig(seed=0), overwrite=True)
    seen = per_seed(run_adapt(cache, run, work / "adapt-seen", adapt(SEEN), overwrite=True, plot=False, save_routers=False), SEEN)
    cells = {(b, {"lore": "lore (unseen)"}.get(m, m + (" seen" if m in UNSEEN else ""))): v for (b, m), v in seen.items()}
    train = load_split(cache, "train")
    unseen: dict = {}
    for g, name in enumerate(train.attributes):
        fit_on = train.subset(torch.nonzero(train.attribute != g).flatten())
        config = MixtureConfig(seed=0)
        left_out = work / f"without-{g}"
        save_model(fit_mixture(fit_on, config), left_out, {"config": config.resolved(fit_on).to_dict(),
                                                           "cache": cache_identity(read_meta(cache), cache)})
        results = run_adapt(cache, left_out, work / f"adapt-without-{g}", adapt(UNSEEN), overwrite=True, plot=False, save_routers=False)
        for (b, m), v in per_seed(results, UNSEEN, only=name).items():
            for s, acc in v.items():
                unseen.setdefault((b, f"{m} unseen"), {}).setdefault(s, []).append(acc)
        print(f"  left out {name}", file=sys.stderr, flush=True)
    cells.update({k: {s: statistics.fmean(v) for s, v in by.items()} for k, by in unseen.items()})
    return cells


def table(title: str, cells: dict, budgets: list[int]) -> str:
    lines = [f"### {title}", "", "| method | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for row in ROWS:
        out = []
        for b in budgets:
            v = list(cells.get((b, row), {}).values())
            out.append("-" if not v else f"{statistics.fmean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else ""))
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="planted,demo,hs2", help="a comma list of planted, demo, hs2")
    p.add_argument("--budgets", default="1,2,5,10,25,50")
    p.add_argument("--seeds", type=int, default=5, help="budget draws per data set")
    p.add_argument("--demo-cache", default=None, help="a demo cache without contexts built before")
    p.add_argument("--hs2-cache", default=None, help="a HelpSteer2-subset cache without contexts built before")
    p.add_argument("--hs2-path", default="/work/shared/data/helpsteer2_subset")
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args()
    start = start_clock(args)
    budgets = [int(b) for b in args.budgets.split(",")]
    text = f"command: python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}\n\n"
    with work_folder(args) as work:
        for data in args.data.split(","):
            folder = work / data
            folder.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter()
            print(data, file=sys.stderr, flush=True)
            if data == "planted":
                cache = folder / "planted.h5"
                if not cache.exists():
                    simulate(cache, regime="shared", groups=4, pairs=6000, dim=64, seed=0, contexts=False)
                title = "planted shared, 4 groups, 6000 pairs x d 64, no contexts"
            elif data == "demo":
                cache = Path(args.demo_cache) if args.demo_cache else text_cache("demo", "demo", None, folder)
                title = "demo without contexts (8 groups, MiniLM)"
            elif data == "hs2":
                cache = Path(args.hs2_cache) if args.hs2_cache else text_cache("hs2", "helpsteer2", args.hs2_path, folder)
                title = "HelpSteer2 subset without contexts (5 attributes as users, MiniLM)"
            else:
                p.error(f"--data: unknown {data!r}")
            cells = one_data_set(cache, folder, budgets, args.seeds)
            text += table(f"{title}, {args.seeds} budget seeds ({time.perf_counter() - began:.0f} s)", cells, budgets) + "\n"
            print(text, file=sys.stderr, flush=True)
    finish(text, args, start)


if __name__ == "__main__":
    main()
