"""Beyond the paper, both regimes: the default configs vs the paper's, end to end, on simulated caches.

    python benchmarks/regimes.py --out /tmp/regimes.md            # 2 regimes x 5 caches, ~2-4 min on 2 cores

For each regime of `micro simulate` ('prompt': the prompt hints at the labeling group, the paper's setting;
'shared': the same pairs labeled by every group, conflicting groups, only the context tells them apart)
and each cache seed (a fresh `simulate(seed=...)`: new directions, prompts, pairs and labels), it fits
 - stage 1 with the defaults (MixtureConfig(): router on context + prompt, batch balance) and with the
   paper's (MixtureConfig.paper(): prompt router, eq. 4's per-example entropy), K = 10, 4 epochs;
 - stage 2 with run_adapt at B = 50 per group: defaults (AdaptConfig(): tau 1) after the default stage 1,
   the paper's (AdaptConfig.paper(): tau 1e-3) after the paper's stage 1, and tau 1e-3 after the default
   stage 1 (the tau comparison);
 - one BT head (method 'single') as the no-mixture reference.
run_adapt uses 3 stage-2 seeds per cache (budget draws); their mean is the cache's value. Tables report
mean ± std (sample std) over the cache seeds. 'single' is scored on all test pairs; the run_adapt methods
on the test pairs minus 16 HyRe shots per group (~1 % of them). 'router H' is the stage-1 router's mean
normalised entropy on the test split (1 = uniform weights), 'head cos' the smallest cosine between a planted
direction and its matched head (Hungarian), 'Bayes' the realised accuracy of each group's own BT rule.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import add_output_options, finish, start_clock, work_folder
from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, bayes_accuracy, evaluate, fit_mixture, match_heads, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, run_adapt

REGIMES = ("prompt", "shared")
METHODS = ("micro", "micro-refine", "budget-bt", "oracle")
SWEEP = dict(budgets=[50], seeds=3, methods=["default", "-baselines"])


def one_cache(regime: str, seed: int, pairs: int, dim: int, work: Path) -> dict:
    """Every number of one (regime, cache seed): {row name: {column: value}}."""
    cache = work / f"{regime}_{seed}.h5"
    truth = simulate(cache, regime=regime, pairs=pairs, dim=dim, seed=seed, overwrite=True)
    train, test = load_split(cache, "train"), load_split(cache, "test")
    bayes = bayes_accuracy(truth, test, with_context=True, realised=True)
    single = evaluate(fit_mixture(train, MixtureConfig(method="single", seed=seed)), test)["average"]["routed_accuracy"]
    rows = {}
    runs = {
        "default": (MixtureConfig(seed=seed), [("default", AdaptConfig(**SWEEP, seed=seed)), ("tau 1e-3", AdaptConfig(**SWEEP, seed=seed, tau=1e-3))]),
        "paper": (MixtureConfig.paper(seed=seed), [("paper", AdaptConfig.paper(**SWEEP, seed=seed))]),
    }
    for name, (stage1, stage2s) in runs.items():
        model = fit_mixture(train, stage1)
        resolved = stage1.resolved(train)
        run = work / "runs" / f"{regime}_{seed}_{name}"
        save_model(model, run, {"config": resolved.to_dict(), "cache": cache_identity(read_meta(cache), cache)})
        ev = evaluate(model, test, router_input=resolved.router_input)
        cos = min(match_heads(truth, model.head_vectors())["cosine"])
        for row, stage2 in stage2s:
            summary = run_adapt(cache, run, work / "out" / f"{regime}_{seed}_{row}", stage2, overwrite=True)["summary"]["50"]
            rows[row] = {m: summary[m]["Average"]["mean"] for m in METHODS}
            rows[row].update({"single": single, "router H": ev["router_entropy"], "head cos": cos, "Bayes": bayes,
                              "tau": stage2.tau})
    return rows


def fmt(vals: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{digits}f} ± {sd:.{digits}f}"


def tables(results: dict, seeds: list[int]) -> str:
    cols = ("micro", "micro-refine", "budget-bt", "oracle", "single", "router H", "head cos", "Bayes")
    label = {"default": "defaults (MixtureConfig() + AdaptConfig())", "paper": "paper (`--paper` both stages)"}
    out = ["Accuracy at B = 50 per group, mean ± std over cache seeds " + ", ".join(map(str, seeds)) + ".", "",
           "| regime | configs | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for regime in REGIMES:
        for row in ("default", "paper"):
            cells = [fmt([results[regime][s][row][c] for s in seeds]) for c in cols]
            out.append(f"| {regime} | {label[row]} | " + " | ".join(cells) + " |")
    out += ["", "Hedge temperature after the DEFAULT stage 1 (same fitted stage-1 models, same budget draws):", "",
            "| regime | tau | micro | micro-refine | wins (micro, per cache seed) |", "|---|---|---|---|---|"]
    for regime in REGIMES:
        wins = sum(results[regime][s]["default"]["micro"] > results[regime][s]["tau 1e-3"]["micro"] for s in seeds)
        for row, tau in (("tau 1e-3", "1e-3 (paper)"), ("default", "1.0 (default)")):
            micro = [results[regime][s][row]["micro"] for s in seeds]
            refine = [results[regime][s][row]["micro-refine"] for s in seeds]
            n = wins if row == "default" else len(seeds) - wins
            out.append(f"| {regime} | {tau} | {fmt(micro)} | {fmt(refine)} | {n}/{len(seeds)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="cache seeds 0..N-1")
    p.add_argument("--pairs", type=int, default=18000, help="labeled pairs per cache (shared: pairs/3 triples x 3 groups)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args()
    seeds = list(range(args.seeds))
    start = start_clock(args)
    with work_folder(args) as work:
        results = {}
        for regime in REGIMES:
            results[regime] = {}
            for s in seeds:
                t = time.perf_counter()
                results[regime][s] = one_cache(regime, s, args.pairs, args.dim, work)
                r = results[regime][s]
                print(f"{regime} seed {s}: default micro {r['default']['micro']:.3f} refine {r['default']['micro-refine']:.3f} "
                      f"| paper micro {r['paper']['micro']:.3f} | oracle {r['default']['oracle']:.3f} ({time.perf_counter() - t:.1f}s)",
                      file=sys.stderr, flush=True)
    finish(tables(results, seeds) + f"\n{args.pairs} pairs, d = {args.dim}, G = 3, K = 10; ", args, start)


if __name__ == "__main__":
    main()
