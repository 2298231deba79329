"""Stage 2's two fitted quantities, rule against rule on the same budget pairs: the router's step count and
how budget-bt / micro-refine choose their prior precision.

    python benchmarks/stage2_rules.py --caches prompt:3000,shared:3000 --cache-seeds 100,101 \
        --rules s0-cv5,s30-cv5,e5-s0-cv5,e20-s0-cv5,s0-loo,s0-pooled-loo --out /tmp/s2_choose.jsonl       # choosing
    python benchmarks/stage2_rules.py --caches prompt:3000,shared:3000,prompt:600,shared:600,demo --cache-seeds 0,1 \
        --rules s0-cv5,default,s0-pooled-loo,e5-s0-cv5,s30-cv5 --out /tmp/s2_report.jsonl                 # reporting
    python benchmarks/stage2_rules.py --table /tmp/s2_report.jsonl

A rule `[e{E}-]s{N}-{select}` is AdaptConfig([epochs=E,] router_min_steps=N, refine_select=select); `s0-cv5` is the rule
before this comparison (10 router epochs whatever the budget, 5-fold cross-validation per context) and
`default` is AdaptConfig() as it stands. Caches: `REGIME:PAIRS` is `micro simulate` (d = 64, G = 3,
cache seed from --cache-seeds; stage 1 MixtureConfig(seed=cache seed), the default early-stopped fit),
`demo` is the MiniLM demo cache (--demo-cache; stage 1 MixtureConfig(epochs=40); the cache is the same
for every cache seed, which only moves the stage-1 seed). Suffix ':prompt': stage 1 with a prompt-only
router; ':unseen': stage 1 without the last group (its contexts are new to the router in stage 2). Every rule of one cache runs
`run_adapt(AdaptConfig(budgets=--budgets, seeds=5, ...))` on the same stage-1 run, so the budget draws
(seeded by the stage-2 seed) are the same pairs for every rule. Each line of --out is one
(cache, cache seed, rule) with each method's per-seed average accuracy over groups at every budget.

The table reports, per cache and budget, mean ± sample std over (cache seeds x stage-2 seeds) of each
rule and the paired difference to the first rule (mean ± standard error of the paired differences).
Choose constants on one set of cache seeds and report on another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, fit_mixture, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, fit_budget_bt, run_adapt
from micro.router.draws import draw_budget_pairs

METHODS = ("micro", "micro-refine", "budget-bt")
SELECT = ("cv5", "loo")


def rule_config(rule: str) -> dict:
    """'default' -> {}; '[e{E}-]s{N}-{select}' -> {epochs: E, router_min_steps: N, refine_select: select}."""
    if rule == "default":
        return {}
    tokens = rule.split("-")
    config = {}
    while tokens and tokens[0][:1] in ("e", "s") and tokens[0][1:].isdigit():
        token = tokens.pop(0)
        config["epochs" if token[0] == "e" else "router_min_steps"] = int(token[1:])
    if "router_min_steps" not in config or not tokens:
        raise SystemExit(f"--rules: {rule!r} is not 'default' or [e<epochs>-]s<min steps>-<select> (e.g. s0-cv5)")
    return {**config, "refine_select": "-".join(tokens)}


def stage1(cache_spec: str, seed: int, work: Path, demo_cache: str) -> tuple[Path, Path]:
    """(cache, stage-1 run dir) of one cache spec and cache seed. Suffixes: ':prompt' fits stage 1 with a
    prompt-only router; ':unseen' fits it without the last group's pairs (that group's context is new
    in stage 2, the setting where the router has to learn from the budget alone)."""
    parts = cache_spec.split(":")
    cut = 1 if parts[0] == "demo" else 2
    name, flags = ":".join(parts[:cut]), parts[cut:]
    extra = {"router_input": "prompt"} if "prompt" in flags else {}
    if name == "demo":
        cache, config = Path(demo_cache), MixtureConfig(epochs=40, seed=seed, **extra)
    else:
        regime, pairs = name.split(":")
        cache = work / f"{regime}_{pairs}_{seed}.h5"
        simulate(cache, regime=regime, pairs=int(pairs), dim=64, seed=seed, overwrite=True)
        config = MixtureConfig(seed=seed, **extra)
    train = load_split(cache, "train")
    if "unseen" in flags:
        train = train.subset(torch.nonzero(train.attribute != len(train.attributes) - 1).flatten())
    model = fit_mixture(train, config)
    run = work / "runs" / f"{cache_spec.replace(':', '_')}_{seed}"
    save_model(model, run, {"config": config.resolved(train).to_dict(), "cache": cache_identity(read_meta(cache), cache)})
    return cache, run


def selection_noise(cache: Path, budgets: list[int], seeds: int, grid: tuple[float, ...], orders: int = 5) -> dict:
    """How much of each rule's choice is the split, not the pairs: budget-bt's chosen c on the same budget
    pairs presented in `orders` orders (cv5's folds follow the order; leave-one-out does not), and the
    seconds of one fit per rule, timed side by side, interleaved. {B: {rule: {"changed": fraction of
    (seed, group) problems whose c differs between orders, "seconds": mean fit time}}}"""
    train = load_split(cache, "train")
    out = {}
    for b in budgets:
        rows = [draw_budget_pairs(train, s, b) for s in range(seeds)]
        diff = torch.stack([train.diff[torch.as_tensor(r[a])] for r in rows for a in sorted(r)])  # [P, B, d]
        gen = torch.Generator().manual_seed(b)
        perms = [torch.arange(b)] + [torch.randperm(b, generator=gen) for _ in range(orders - 1)]
        chosen = {rule: [] for rule in SELECT}
        seconds = {rule: 0.0 for rule in SELECT}
        for perm in perms:
            for rule in SELECT:
                t = time.perf_counter()
                chosen[rule].append(fit_budget_bt(diff[:, perm], grid, select=rule).precision)
                seconds[rule] += time.perf_counter() - t
        out[str(b)] = {rule: {"changed": float((torch.stack(chosen[rule]) != chosen[rule][0]).any(0).float().mean()),
                              "seconds": seconds[rule] / len(perms)} for rule in SELECT}
    return out


def run(args) -> None:
    rules = args.rules.split(",")
    for r in rules:
        rule_config(r)
    out = open(args.out, "a") if args.out else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        for spec in args.caches.split(","):
            for cseed in [int(s) for s in args.cache_seeds.split(",")]:
                t = time.perf_counter()
                cache, run_dir = stage1(spec, cseed, work, args.demo_cache)
                budgets = [int(b) for b in args.budgets.split(",")]
                noise = selection_noise(cache, [b for b in budgets if b >= 5], args.seeds, AdaptConfig().refine_grid) if args.noise else None
                for rule in rules:
                    config = AdaptConfig(budgets=budgets, seeds=args.seeds,
                                         baselines=False, plot=False, save_routers=False, **rule_config(rule))
                    res = run_adapt(cache, run_dir, work / "out" / f"{run_dir.name}_{rule}", config, overwrite=True)
                    attrs = res["attributes"]
                    per: dict = {}
                    for r in res["records"]:
                        if r["method"] in METHODS:
                            per.setdefault(str(r["budget"]), {}).setdefault(r["method"], {}).setdefault(r["seed"], {})[r["attribute"]] = r["accuracy"]
                    values = {b: {m: [statistics.fmean(s[a] for a in attrs) for _, s in sorted(seeds.items())]
                                  for m, seeds in ms.items()} for b, ms in per.items()}
                    line = {"cache": spec, "cache_seed": cseed, "rule": rule, "config": rule_config(rule) or "default",
                            "values": values, "selection_noise": noise, "seconds": round(time.perf_counter() - t, 1)}
                    t = time.perf_counter()
                    if out:
                        out.write(json.dumps(line) + "\n")
                        out.flush()
                    b = max(values, key=int)
                    print(f"{spec} seed {cseed} {rule}: " + " ".join(f"{m}@{b} {statistics.fmean(values[b][m]):.3f}" for m in METHODS),
                          file=sys.stderr, flush=True)


def fmt(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def paired(vals: list[float], base: list[float]) -> str:
    d = [v - b for v, b in zip(vals, base)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return f"{statistics.fmean(d):+.3f} ± {se:.3f}"


def table(path: str) -> str:
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    caches = list(dict.fromkeys(x["cache"] for x in lines))
    rules = list(dict.fromkeys(x["rule"] for x in lines))
    base = rules[0]
    out = []
    for method in METHODS:
        out += [f"**{method}** (accuracy, mean ± std over cache seeds x stage-2 seeds; Δ: paired difference to "
                f"`{base}`, mean ± s.e.)", "",
                "| cache | B | " + " | ".join(f"`{r}`" for r in rules) + " | " + " | ".join(f"Δ `{r}`" for r in rules[1:]) + " |",
                "|---|---|" + "---|" * (2 * len(rules) - 1)]
        for cache in caches:
            rows = [x for x in lines if x["cache"] == cache]
            seeds = sorted({x["cache_seed"] for x in rows})
            budgets = sorted({int(b) for x in rows for b in x["values"]})

            def vals(rule, b):
                got = []
                for s in seeds:
                    for x in rows:
                        if x["rule"] == rule and x["cache_seed"] == s:
                            got += x["values"][str(b)][method]
                return got

            for b in budgets:
                cells = [fmt(vals(r, b)) if vals(r, b) else "–" for r in rules]
                deltas = [paired(vals(r, b), vals(base, b)) if vals(r, b) else "–" for r in rules[1:]]
                out.append(f"| {cache} (seeds {','.join(map(str, seeds))}) | {b} | " + " | ".join(cells + deltas) + " |")
        out.append("")
    out += ["**Selection noise** (budget-bt's chosen c on the same budget pairs in 5 orders: fraction of (stage-2 seed, group) "
            "problems whose c changes with the order; mean seconds of one budget-bt fit of all problems, timed interleaved)", "",
            "| cache | B | " + " | ".join(f"{r} changed | {r} s" for r in SELECT) + " |", "|---|---|" + "---|" * (2 * len(SELECT))]
    for cache in caches:
        first = {}
        for x in lines:
            if x["cache"] == cache and x.get("selection_noise"):
                first.setdefault(x["cache_seed"], x["selection_noise"])
        for b in sorted({int(b) for n in first.values() for b in n}):
            cells = []
            for r in SELECT:
                cells.append(f"{statistics.fmean(n[str(b)][r]['changed'] for n in first.values()):.2f}")
                cells.append(f"{statistics.fmean(n[str(b)][r]['seconds'] for n in first.values()):.3f}")
            out.append(f"| {cache} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--caches", default="prompt:3000,shared:3000,prompt:600,shared:600,demo",
                   help="comma list of REGIME:PAIRS (micro simulate, d = 64) and 'demo'; ':prompt' appended: a prompt-only stage-1 router; ':unseen': stage 1 without the last group")
    p.add_argument("--cache-seeds", default="0,1", help="simulate seeds (and stage-1 seeds)")
    p.add_argument("--rules", default="s0-cv5,default", help="comma list of 'default' and [e<epochs>-]s<min steps>-<select>; the first is the reference")
    p.add_argument("--budgets", default="1,5,10,25,50")
    p.add_argument("--seeds", type=int, default=5, help="stage-2 seeds (budget draws) per cache")
    p.add_argument("--demo-cache", default="/work/caches/peers_demo.h5", help="MiniLM cache of `micro embed demo`")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-noise", dest="noise", action="store_false", help="skip the selection-noise measurement")
    p.add_argument("--out", default=None, help="append one JSON line per (cache, cache seed, rule) here")
    p.add_argument("--workdir", default=None, help="keep caches and runs here (default: a temporary folder)")
    p.add_argument("--table", default=None, help="print the Markdown tables of a finished --out file and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(args.threads)
    run(args)
    if args.out:
        print(table(args.out))


if __name__ == "__main__":
    main()
