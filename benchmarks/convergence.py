"""Stage 1 trained until it converges vs fixed epoch counts, on planted caches of both regimes.

    python benchmarks/convergence.py --dims 64 --pairs 600,6000 --seeds 5 --out /tmp/conv64.jsonl
    python benchmarks/convergence.py --table /tmp/conv64.jsonl            # the Markdown tables from a run

For each regime of `micro simulate` ('prompt', 'shared'), cache size, dimension and cache seed (a fresh
`simulate(seed=...)`), stage 1 is fitted with one or more of `CONFIGS` (`--configs`):
  default      MixtureConfig()                        candidates side by side, halving, one rule, the refit
  restarts=1   MixtureConfig(restarts=1)              one seed per (alpha, head scale)
  4 epochs, 40 epochs  MixtureConfig(epochs=N)        a fixed schedule, no held-out slice
  batch 32     MixtureConfig(batch_size=32)           the paper's batch on every cache
  head init 1  MixtureConfig(head_init=(1.0,))        the usual initialisation only
  one alpha    MixtureConfig(alpha_alternatives=())   the regulariser's weight 0.5 only
  alpha 0      MixtureConfig(alpha=0.0)               no router regulariser
then stage 2 with run_adapt(AdaptConfig(budgets=[10, 50], seeds=3)) (stage-2 seeds = budget draws; their
mean is the cache's value). Each line of --out is one (regime, pairs, dim, seed, config) with stage1-best,
micro, micro-refine, budget-bt, oracle at B = 10 and 50, the smallest cosine between a planted direction
and its matched head ('head cos'), the steps run and the CPU seconds of the stage-1 fit, and two lines of
what the heads allow without the test pairs (`head_limits`): the head each context's training labels
choose ('label-chosen head'; stage1-best chooses on the test pairs) and Hedge over the context's 50
budget pairs with no router ('hedge alone@50'). Tables report
mean ± std (sample std) over cache seeds.

    python benchmarks/convergence.py --cache hs2=/path/hs2.h5 --cache demo=/path/demo.h5 --seeds 5 --configs "default,4 epochs,40 epochs"

With --cache LABEL=PATH (an embedded cache, e.g. from `micro embed`) the same row is made for that cache:
stage 1 fitted with seeds 0..--seeds-1, stage 2 with the same 5 budget draws (seed 0) for every fit; mean ±
std over the stage-1 seeds of each fit's 5-draw mean; no head cos (nothing is planted).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import add_planted_grid_options, read_rows, row_writer

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, bayes_accuracy, fit_mixture, match_heads, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, run_adapt
from micro.router.draws import draw_budget_pairs
from micro.router.hedge import context_log_weights, head_losses

CONFIGS = {
    "default": {},
    "restarts=1": {"restarts": 1},
    "4 epochs": {"epochs": 4},
    "40 epochs": {"epochs": 40},
    "batch 32": {"batch_size": 32},
    "head init 1": {"head_init": (1.0,)},
    "one alpha": {"alpha_alternatives": ()},
    "alpha 0": {"alpha": 0.0},
}
METHODS = ("stage1-best", "micro", "micro-refine", "budget-bt", "oracle")
BUDGETS = (10, 50)


def head_limits(model, train, test, seeds: list[int], budget: int = max(BUDGETS)) -> dict:
    """What the stage-1 heads allow without looking at the test pairs, per context (attribute), mean over
    contexts: `label-chosen head`, the test accuracy of the one head with the lowest summed BT loss over ALL
    the context's training pairs (stage1-best picks it on the test pairs, so it is biased upwards), and
    `hedge alone@B`, the heads weighted by Hedge over the context's B budget pairs alone (no router; the
    same draws as stage 2's seeds), mean over the seeds."""
    with torch.no_grad():
        losses = head_losses(model.head_margins(train.diff)).masked_fill(model.head_mask, float("inf"))
        test_margins = model.head_margins(test.diff)
    attrs = sorted(set(test.attribute.tolist()) & set(train.attribute.tolist()))

    def accuracy(weights) -> float:  # weights: {attribute: [K]}
        return statistics.fmean(float(((test_margins[test.attribute == a] @ weights[a]) > 0).float().mean()) for a in attrs)

    chosen = {a: torch.nn.functional.one_hot(losses[train.attribute == a].sum(0).argmin(), model.k).float() for a in attrs}
    hedge = []
    for s in seeds:
        draw = draw_budget_pairs(train, s, budget)
        hedge.append(accuracy({a: torch.softmax(context_log_weights(losses[torch.as_tensor(draw[a])], 1.0), -1) for a in attrs}))
    return {"label-chosen head": accuracy(chosen), f"hedge alone@{budget}": statistics.fmean(hedge)}


def fit_and_adapt(cache: Path, train, name: str, fit_seed: int, adapt: AdaptConfig, work: Path, truth=None) -> dict:
    """Stage 1 with config `name` and seed `fit_seed` on `train`, then stage 2 on `cache`: one result row."""
    stage1 = MixtureConfig(seed=fit_seed, **CONFIGS[name])
    t = time.process_time()
    model = fit_mixture(train, stage1)
    fit_cpu = time.process_time() - t
    run = work / "runs" / f"{cache.stem}_{fit_seed}_{name.replace(' ', '_')}"
    save_model(model, run, {"config": stage1.resolved(train).to_dict(), "cache": cache_identity(read_meta(cache), cache)})
    results = run_adapt(cache, run, work / "out" / run.name, adapt)
    row = {"seed": fit_seed, "config": name, "train_pairs": len(train), "adapt_seeds": adapt.seeds,
           "steps": model.train_steps, "best_step": model.fit_record.best_step, "stop": model.fit_record.stop_reason,
           "kept": model.fit_record.kept_criterion, "criterion_best_steps": model.fit_record.criterion_best_steps,
           "head_init": model.fit_record.head_init, "folds": model.fit_record.folds, "alpha": model.fit_record.alpha,
           "chosen": model.fit_record.chosen, "chosen_z": model.fit_record.chosen_z, "candidate_steps": model.fit_record.candidate_steps,
           "fit_cpu_s": round(fit_cpu, 2), "head_cos": None if truth is None else min(match_heads(truth, model.head_vectors())["cosine"])}
    for b in BUDGETS:
        for m in METHODS:
            row[f"{m}@{b}"] = results["summary"][str(b)][m]["Average"]["mean"]
    row.update(head_limits(model, train, load_split(cache, "test"), adapt.seed_values))
    return row


def stage2(seeds: int, seed: int) -> AdaptConfig:
    return AdaptConfig(budgets=list(BUDGETS), seeds=seeds, seed=seed, methods=["default", "-baselines"])


def one_cache(regime: str, pairs: int, dim: int, seed: int, configs: list[str], work: Path, emit, adapt_seeds: int = 3) -> None:
    """A planted cache `simulate(regime, pairs, dim, seed)`; stage 1 and stage-2 draws use the same seed."""
    cache = work / f"{regime}_{pairs}_{dim}_{seed}.h5"
    truth = simulate(cache, regime=regime, pairs=pairs, dim=dim, seed=seed)
    train, test = load_split(cache, "train"), load_split(cache, "test")
    bayes = bayes_accuracy(truth, test, with_context=True, realised=True)
    for name in configs:
        row = fit_and_adapt(cache, train, name, seed, stage2(adapt_seeds, seed), work, truth)
        emit({"regime": regime, "pairs": pairs, "dim": dim, **row, "bayes": bayes})


def real_cache(label: str, cache: Path, seeds: range, configs: list[str], work: Path, emit, adapt_seeds: int = 5) -> None:
    """An embedded cache (no planted truth, so no head cos): stage 1 with each fit seed, stage 2 with the
    same `adapt_seeds` budget draws (seed 0, 1, ...) for every fit."""
    train, test = load_split(cache, "train"), load_split(cache, "test")
    for seed in seeds:
        for name in configs:
            row = fit_and_adapt(cache, train, name, seed, stage2(adapt_seeds, 0), work)
            emit({"regime": label, "pairs": len(train) + len(test), "dim": train.hidden_size, **row})


def fmt(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def tables(rows: list[dict]) -> str:
    cols = ["head cos", "stage1-best@50", "micro@10", "budget-bt@10", "micro@50", "micro-refine@50", "budget-bt@50", "oracle@50",
            "label-chosen head", "hedge alone@50", "steps", "fit CPU s"]
    key = {"head cos": "head_cos", "steps": "steps", "fit CPU s": "fit_cpu_s"}
    out = ["| regime | pairs | d | stage 1 | seeds | " + " | ".join(cols) + " |", "|---|---|---|---|---|" + "---|" * len(cols)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["regime"], r["pairs"], r["dim"], r["config"]), []).append(r)
    order = {c: i for i, c in enumerate(CONFIGS)}
    for (regime, pairs, dim, name), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1], order.get(kv[0][3], 9))):
        cells = []
        for c in cols:
            vals = [float(r[key.get(c, c)]) for r in rs if r.get(key.get(c, c)) is not None]
            cells.append("–" if not vals else f"{statistics.fmean(vals):.0f}" if c in ("steps",) else (f"{statistics.fmean(vals):.1f}" if c == "fit CPU s" else fmt(vals)))
        out.append(f"| {regime} | {pairs} | {dim} | {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_planted_grid_options(p, pairs="600,6000", cache_help="an embedded cache instead of the planted ones (repeatable; "
                             "--dims/--pairs/--regimes are then unused, --seeds counts stage-1 fit seeds)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--adapt-seeds", type=int, default=None, help="stage-2 budget draws per fit (default 3 on planted caches, 5 on --cache)")
    p.add_argument("--out", default=None, help="append one JSON line per fit here")
    p.add_argument("--table", default=None, help="only print the tables of a finished --out file")
    args = p.parse_args()
    if args.table:
        print(tables(read_rows(args.table)))
        return
    if any("=" not in c for c in args.cache):
        p.error("--cache takes LABEL=PATH (e.g. --cache hs2=hs2.h5)")
    torch.set_num_threads(1)
    rows: list[dict] = []
    emit = row_writer(args.out, rows)

    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in (c.split("=", 1) for c in args.cache):
            real_cache(label, Path(path), range(args.first_seed, args.first_seed + args.seeds), configs, Path(tmp), emit, args.adapt_seeds or 5)
        for dim in [] if args.cache else [int(x) for x in args.dims.split(",")]:
            for pairs in [int(x) for x in args.pairs.split(",")]:
                for regime in args.regimes.split(","):
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        one_cache(regime, pairs, dim, seed, configs, Path(tmp), emit, args.adapt_seeds or 3)
    print(tables(rows))


if __name__ == "__main__":
    main()
