"""Stage 1 trained until it converges vs fixed epoch counts, on planted caches of both regimes.

    python benchmarks/convergence.py --dims 64 --pairs 600,6000 --seeds 5 --out /tmp/conv64.jsonl
    python benchmarks/convergence.py --table /tmp/conv64.jsonl            # the Markdown tables from a run

For each regime of `micro simulate` ('prompt', 'shared'), cache size, dimension and cache seed (a fresh
`simulate(seed=...)`), stage 1 is fitted with
  default     MixtureConfig()                     early stopping on a held-out prompt slice, 4 restarts
  restarts=1  MixtureConfig(restarts=1)           early stopping, one initialisation
  4 epochs    MixtureConfig(epochs=4)             the earlier default
  40 epochs   MixtureConfig(epochs=40)
then stage 2 with run_adapt(AdaptConfig(budgets=[10, 50], seeds=3)) (stage-2 seeds = budget draws; their
mean is the cache's value). Each line of --out is one (regime, pairs, dim, seed, config) with stage1-best,
micro, micro-refine, budget-bt, oracle at B = 10 and 50, the smallest cosine between a planted direction
and its matched head ('head cos'), the steps run and the CPU seconds of the stage-1 fit. Tables report
mean ± std (sample std) over cache seeds.
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
from micro.heads import MixtureConfig, bayes_accuracy, fit_mixture, match_heads, simulate
from micro.heads.model import save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, run_adapt

REGIMES = ("prompt", "shared")
CONFIGS = {
    "default": {},
    "restarts=1": {"restarts": 1},
    "4 epochs": {"epochs": 4},
    "40 epochs": {"epochs": 40},
}
METHODS = ("stage1-best", "micro", "micro-refine", "budget-bt", "oracle")
BUDGETS = (10, 50)


def one_cache(regime: str, pairs: int, dim: int, seed: int, configs: list[str], work: Path, emit) -> None:
    cache = work / f"{regime}_{pairs}_{dim}_{seed}.h5"
    truth = simulate(cache, regime=regime, pairs=pairs, dim=dim, seed=seed)
    train, test = load_split(cache, "train"), load_split(cache, "test")
    bayes = bayes_accuracy(truth, test, with_context=True, realised=True)
    for name in configs:
        stage1 = MixtureConfig(seed=seed, **CONFIGS[name])
        t = time.process_time()
        model = fit_mixture(train, stage1)
        fit_cpu = time.process_time() - t
        run = work / "runs" / f"{cache.stem}_{name.replace(' ', '_')}"
        save_model(model, run, {"config": stage1.resolved(train).to_dict(), "cache": cache_identity(read_meta(cache), cache)})
        results = run_adapt(cache, run, work / "out" / run.name,
                            AdaptConfig(budgets=list(BUDGETS), seeds=3, seed=seed, baselines=False, plot=False, save_routers=False))
        row = {"regime": regime, "pairs": pairs, "dim": dim, "seed": seed, "config": name, "train_pairs": len(train),
               "steps": model.train_steps, "best_step": model.fit_record.best_step, "stop": model.fit_record.stop_reason,
               "fit_cpu_s": round(fit_cpu, 2), "head_cos": min(match_heads(truth, model.head_vectors())["cosine"]), "bayes": bayes}
        for b in BUDGETS:
            for m in METHODS:
                row[f"{m}@{b}"] = results["summary"][str(b)][m]["Average"]["mean"]
        emit(row)


def fmt(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def tables(rows: list[dict]) -> str:
    cols = ["head cos", "stage1-best@50", "micro@10", "budget-bt@10", "micro@50", "micro-refine@50", "budget-bt@50", "oracle@50", "steps", "fit CPU s"]
    key = {"head cos": "head_cos", "steps": "steps", "fit CPU s": "fit_cpu_s"}
    out = ["| regime | pairs | d | stage 1 | seeds | " + " | ".join(cols) + " |", "|---|---|---|---|---|" + "---|" * len(cols)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["regime"], r["pairs"], r["dim"], r["config"]), []).append(r)
    order = {c: i for i, c in enumerate(CONFIGS)}
    for (regime, pairs, dim, name), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1], order.get(kv[0][3], 9))):
        cells = []
        for c in cols:
            vals = [float(r[key.get(c, c)]) for r in rs]
            cells.append(f"{statistics.fmean(vals):.0f}" if c in ("steps",) else (f"{statistics.fmean(vals):.1f}" if c == "fit CPU s" else fmt(vals)))
        out.append(f"| {regime} | {pairs} | {dim} | {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="64")
    p.add_argument("--pairs", default="600,6000")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--regimes", default=",".join(REGIMES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=None, help="append one JSON line per fit here")
    p.add_argument("--table", default=None, help="only print the tables of a finished --out file")
    args = p.parse_args()
    if args.table:
        print(tables([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(1)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for dim in [int(x) for x in args.dims.split(",")]:
            for pairs in [int(x) for x in args.pairs.split(",")]:
                for regime in args.regimes.split(","):
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        one_cache(regime, pairs, dim, seed, args.configs.split(","), Path(tmp), emit)
    print(tables(rows))


if __name__ == "__main__":
    main()
