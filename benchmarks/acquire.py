"""Active acquisition vs the seeded random draw, over cache seeds: micro and micro-refine at B = 5, 10, 25, 50.

    python benchmarks/acquire.py --out /tmp/acquire.md --demo-cache /work/caches/peers_demo.h5 \\
        --hs2-cache /work/caches/peers_hs2.h5          # planted: 2 regimes x 3 cache seeds, 10 stage-2 seeds
    python benchmarks/acquire.py --planted shared:0.5,shared:-4 --rules bald   # other planted settings
    python benchmarks/acquire.py --planted shared:-4,prompt --groups 8 --pairs 24000   # 8 groups (K stays 10), 3000 pairs each
    python benchmarks/acquire.py --planted shared:-4,prompt:-4 --groups 8 --pairs 24000 --decisive 0.05   # 5 % decisive pairs

`--planted` lists the planted settings, each `regime` or `regime:conflict` (SimulateConfig.conflict, the
fraction of the groups' mean direction removed). A negative conflict, u_g ∝ v_g + |c| mean_h v_h, ADDS the
common direction, so most pairs are consensus pairs (every
group ranks them the same way) and only a minority separate the groups. Each setting's header gives that
consensus share: the fraction of pairs whose planted scores s_g have the same sign for every group, and
the Bayes accuracy on the test split with the group known and from the prompt only (mean over the cache
seeds): their difference is what a user's labels can buy at most.

`--groups G` (default 3) is SimulateConfig.groups of every planted cache, `--decisive q` (default: none)
its SimulateConfig.decisive: only a share q of the pairs tell the groups apart, by a large margin. Each
planted table ends with the decisive (not consensus) share of the pairs each rule asked after the shared
first batch, beside that share in the train pools: does the rule find the pairs that separate the groups?

Per planted setting and cache seed c: `simulate(regime=..., groups=G, pairs=3000, dim=64, seed=c)` and a default
stage-1 fit (`MixtureConfig(seed=c)`, K = 10); per real cache (MiniLM caches of the demo data and of the
HelpSteer2 subset, if given) one default stage-1 fit (the demo with DemoConfig's stage-1 epochs). Then one
`run_adapt` per rule (baselines off) with the same stage-2 seeds: the rules see the same first batch,
the same stage-1 run and the same test pairs, so rule - random is a paired difference per
(cache seed, stage-2 seed). A run's accuracy is its per-seed average over groups.

Per setting and method, each cell is mean ± sample std over the runs ((cache seed, stage-2 seed)
pairs); 'saving' is the smallest B whose mean reaches random's B = 50 mean (the label saving: 25 = half
the labels); 'worst vs random' is the lowest mean over B > 5 of the paired difference rule - random,
± the sample std of that difference (B = 5 is the shared random first batch of every rule).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from micro.demo.pipeline import DemoConfig
from micro.embedcache import load_split
from micro.heads import MixtureConfig, bayes_accuracy, run_fit_mixture, simulate
from micro.heads.config import SimulateConfig
from micro.methods import REGISTRY
from micro.router.acquire import AcquireOptions
from micro.router import AdaptConfig, run_adapt
from micro.router import sweep

REGIMES = ("prompt", "shared")
BUDGETS = [5, 10, 25, 50]
METHODS = ("micro", "micro-refine")
#: label: (acquire rule, share of each round drawn at random)
RULES = {"random": ("random", 0.0), "uncertainty": ("uncertainty", 0.0), "disagreement": ("disagreement", 0.0),
         "bald": ("bald", 0.0), "bald + half random": ("bald", 0.5), "disagreement + half random": ("disagreement", 0.5)}


def planted_settings(spec: str) -> list[tuple[str, str, float | None]]:
    """[(setting name, regime, conflict or None)] from e.g. 'shared:0.0,shared:-4,prompt'."""
    out = []
    for item in filter(None, spec.split(",")):
        regime, _, conflict = item.partition(":")
        if regime not in REGIMES:
            raise SystemExit(f"error: --planted: unknown regime {regime!r} in {item!r}; use prompt or shared")
        try:
            c = float(conflict) if conflict else None
        except ValueError:
            raise SystemExit(f"error: --planted: conflict {conflict!r} in {item!r} is not a number; e.g. shared:0.5") from None
        if c is not None and not c <= 1:
            raise SystemExit(f"error: --planted: conflict {c:g} in {item!r} is above 1; use at most 1 (negative adds consensus)")
        out.append((f"planted '{regime}'" + (f", conflict = {c:g}" if c is not None else ""), regime, c))
    return out


def consensus(pair_scores: np.ndarray) -> np.ndarray:
    """[n] bool: the pair's planted scores [n, G] have one sign for every group (a consensus pair; the others
    are the decisive pairs, which tell the groups apart)."""
    signs = np.sign(pair_scores)
    return np.all(signs == signs[:, :1], axis=1)


def per_run(records: list[dict], method: str, budget: int) -> dict[int, float]:
    """{stage-2 seed: average accuracy over groups} of one method at one budget."""
    by: dict[int, list[float]] = {}
    for r in records:
        if r["method"] == method and r["budget"] == budget:
            by.setdefault(r["seed"], []).append(r["accuracy"])
    return {s: float(np.mean(v)) for s, v in sorted(by.items())}


def run_cache(name: str, cache: Path, stage1: MixtureConfig, seeds: int, work: Path, rules: dict,
              decisive: np.ndarray | None = None) -> dict:
    """{rule: {method: {budget: [accuracy per stage-2 seed]}}} for one cache; with `decisive` (bool per cache
    pair row) also {rule: {"decisive": [share of decisive pairs among each seed's asked pairs after the first
    batch]}}."""
    run_fit_mixture(cache, work / f"{name}-run", stage1, overwrite=True)
    out = {}
    for label, (rule, share) in rules.items():
        t = time.perf_counter()
        cfg = AdaptConfig(budgets=BUDGETS, seeds=seeds, methods=["default", "-baselines"],
                          acquire=rule, options={"acquire": {"random": share}})
        calls = []

        def spy(rule, split, *args, acquire=sweep.acquire_pairs, **kwargs):  # records the train split and the asked rows
            calls.append((split, acquire(rule, split, *args, **kwargs)))
            return calls[-1][1]

        with mock.patch.object(sweep, "acquire_pairs", spy):
            records = run_adapt(cache, work / f"{name}-run", work / f"{name}-{rule}-{share}", cfg, overwrite=True)["records"]
        out[label] = {m: {b: list(per_run(records, m, b).values()) for b in BUDGETS} for m in METHODS}
        if decisive is not None:  # the pairs asked after the shared first batch, as /pairs rows
            (split, (asked, _)), = calls
            out[label]["decisive"] = [float(np.mean(np.concatenate([decisive[split.pair_rows[rows[AcquireOptions().batch:]]]
                                                                    for rows in d.values()]))) for d in asked[BUDGETS[-1]]]
            out["pool decisive"] = float(np.mean(decisive[split.pair_rows]))
        print(f"{name} {label}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    return out


def ms(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def table(setting: str, runs: list[dict], rules: dict) -> list[str]:
    """One Markdown table; `runs` is one run_cache result per cache seed (runs are concatenated)."""
    def acc(label, m, b):
        return np.concatenate([r[label][m][b] for r in runs])
    lines = [f"{setting}: average accuracy by budget B (pairs per group), {len(acc('random', 'micro', 5))} runs "
             f"({len(runs)} cache seed(s) x {len(runs[0]['random']['micro'][5])} stage-2 seeds).", "",
             "| method | acquire | " + " | ".join(f"B = {b}" for b in BUDGETS) + " | saving | worst vs random |",
             "|---|---|" + "---|" * (len(BUDGETS) + 2)]
    for m in METHODS:
        target = acc("random", m, BUDGETS[-1]).mean()
        for label in rules:
            reach = [b for b in BUDGETS if acc(label, m, b).mean() >= target - 1e-12]
            diffs = {b: acc(label, m, b) - acc("random", m, b) for b in BUDGETS[1:]}
            worst = min(diffs, key=lambda b: diffs[b].mean())
            worst_cell = "-" if label == "random" else f"{diffs[worst].mean():+.3f} ± {diffs[worst].std(ddof=1):.3f} (B = {worst})"
            lines.append(f"| {REGISTRY[m].label} | {label} | " + " | ".join(ms(acc(label, m, b)) for b in BUDGETS)
                         + f" | {'B = ' + str(reach[0]) if reach else 'not reached'} | {worst_cell} |")
    if "decisive" in runs[0]["random"]:
        lines += ["", f"Decisive (not consensus) share of the pairs asked after the first batch (B = 6..{BUDGETS[-1]}), "
                  "mean ± std over the runs: " + "; ".join(f"{label} {ms(np.concatenate([r[label]['decisive'] for r in runs]))}"
                                                             for label in rules)
                  + f"; in the train pools {ms([r['pool decisive'] for r in runs])}."]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--groups", type=int, default=3, help="planted annotator groups G (SimulateConfig.groups)")
    p.add_argument("--decisive", type=float, default=None, help="share of decisive pairs (SimulateConfig.decisive)")
    p.add_argument("--seeds", type=int, default=10, help="stage-2 seeds per cache")
    p.add_argument("--cache-seeds", type=int, default=3, help="planted caches per setting")
    p.add_argument("--planted", default=",".join(REGIMES),
                   help="planted settings, comma-separated regime[:conflict], e.g. shared:0.0,shared:-4,prompt ('' for none)")
    p.add_argument("--rules", default=",".join(RULES), help="comma-separated labels of RULES ('random' always runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--demo-cache", default=None, help="MiniLM cache of the demo data (`micro embed demo --model minilm`)")
    p.add_argument("--hs2-cache", default=None, help="MiniLM cache of the HelpSteer2 subset")
    p.add_argument("--out", default=None, help="also write the Markdown tables here")
    p.add_argument("--workdir", default=None, help="keep caches and runs here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rules = {k: RULES[k] for k in ["random"] + [r for r in args.rules.split(",") if r and r != "random"]}
    settings = planted_settings(args.planted)
    start = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        for setting, regime, conflict in settings:
            runs, shares, bayes = [], [], []
            for c in range(args.cache_seeds):
                name = (regime + ("" if conflict is None else f"{conflict:g}") + f"-g{args.groups}"
                        + ("" if args.decisive is None else f"-q{args.decisive:g}") + f"-{c}")
                cache = work / f"{name}.h5"
                truth = simulate(cache, SimulateConfig(regime=regime, conflict=conflict, groups=args.groups,
                                                       decisive=args.decisive),
                                 pairs=args.pairs, dim=args.dim, seed=c, overwrite=True)
                agree = consensus(truth.pair_scores)
                shares.append(float(agree.mean()))
                test = load_split(cache, "test")
                bayes.append([bayes_accuracy(truth, test, with_context=known) for known in (True, False)])
                runs.append(run_cache(name, cache, MixtureConfig(seed=c), args.seeds, work, rules, decisive=~agree))
            known, blind = np.mean(bayes, axis=0)
            lines += table(f"{setting} (consensus share {', '.join(f'{v:.2f}' for v in shares)}; Bayes accuracy, group "
                           f"known {known:.3f}, prompt only {blind:.3f})", runs, rules)
            print("\n".join(lines), file=sys.stderr, flush=True)
        for name, path, stage1 in (("demo (MiniLM)", args.demo_cache, MixtureConfig(seed=0, epochs=DemoConfig().stage1_epochs)),
                                   ("HelpSteer2 subset (MiniLM)", args.hs2_cache, MixtureConfig(seed=0))):
            if path:
                lines += table(name, [run_cache(name.split()[0], Path(path), stage1, args.seeds, work, rules)], rules)
    text = "\n".join(lines) + (f"\nPlanted: {args.pairs} pairs, d = {args.dim}, G = {args.groups}, decisive {args.decisive}, cache seeds 0..{args.cache_seeds - 1}; "
                               f"K = 10, {args.seeds} stage-2 seeds, batch 5; {time.perf_counter() - start:.0f} s on {args.threads} thread(s).\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
