"""Stage-2 speed: the paper's full budget sweep on a HelpSteer2-shaped cache, on the CPU.

budgets {5, 10, 25, 50, 100, 150} x 5 seeds x 5 attributes, K = 10 heads, d = 3072 (GRM-Llama3.2-3B),
~23.5K train / ~3.8K test pairs. The cache holds random embeddings shaped like HelpSteer2's (one pair per
prompt and attribute, 2 responses per prompt, a (context + prompt) row per prompt and attribute); labels
follow a planted per-attribute direction so accuracies are not all 0.5. The stage-1 run and its
single / static / ensemble siblings are planted (random heads; their fitting is stage 1's cost, not
stage 2's), so the timed part is exactly `run_adapt`: routers, HyRe, budget-bt, oracle, micro-refine,
files and plot.

    python benchmarks/adapt_speed.py [--workdir /tmp/adapt_bench] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from micro.embedcache import read_meta, write_cache
from micro.heads import MixtureConfig
from micro.heads.model import MixtureRewardModel, save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, run_adapt

ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def make_cache(path: Path, d: int = 3072, train_prompts: int = 4700, test_prompts: int = 760, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_prompts = train_prompts + test_prompts
    a_count = len(ATTRS)
    prompts = rng.standard_normal((n_prompts, d), dtype=np.float32)
    responses = rng.standard_normal((2 * n_prompts, d), dtype=np.float32)
    contexts = rng.standard_normal((a_count, d), dtype=np.float32)
    directions = rng.standard_normal((a_count, d)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    prompt = np.repeat(np.arange(n_prompts), a_count)
    attr = np.tile(np.arange(a_count), n_prompts)
    a, b = 2 * prompt, 2 * prompt + 1
    score = 3.0 * ((responses[a] - responses[b]) * directions[attr]).sum(1)
    a_wins = rng.random(len(score)) < 1 / (1 + np.exp(-score))
    write_cache(
        path,
        meta={"model_id": "bench/helpsteer2-shaped", "model_revision": "random", "pooling": "last", "max_length": 0,
              "template": "bench", "source_sha256": ""},
        sequences={"embedding": responses, "prompt": np.repeat(np.arange(n_prompts), 2), "text": [""] * (2 * n_prompts)},
        prompts={"embedding": prompts, "text": [""] * n_prompts},
        pairs={"chosen": np.where(a_wins, a, b), "rejected": np.where(a_wins, b, a), "prompt": prompt,
               "context_prompt": prompt * a_count + attr, "attribute": attr, "context": attr,
               "split": (prompt >= train_prompts).astype(np.int64)},
        attributes=ATTRS,
        splits=["train", "test"],
        contexts=ATTRS,
        context_prompts={"embedding": (prompts[:, None, :] + contexts[None]).reshape(-1, d),
                         "prompt": np.repeat(np.arange(n_prompts), a_count), "context": np.tile(np.arange(a_count), n_prompts)},
    )


def plant_runs(cache: Path, runs: Path, d: int = 3072, k: int = 10) -> Path:
    ident = cache_identity(read_meta(cache), cache)
    for method, weights, kk in (("micro", "router", k), ("single", "uniform", 1), ("static", "static", k), ("ensemble", "uniform", k)):
        model = MixtureRewardModel(d, kk, weights=weights, seed=1)
        save_model(model, runs / method, {"config": MixtureConfig(method=method, k=k).to_dict(), "cache": ident})
    return runs / "micro"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/adapt_bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    cache = work / "helpsteer2_shaped.h5"
    t = time.perf_counter()
    if not cache.exists():
        make_cache(cache)
    run = plant_runs(cache, work / "runs")
    setup = time.perf_counter() - t
    config = AdaptConfig(budgets=[5, 10, 25, 50, 100, 150], seeds=5, tau=1e-3)
    t = time.perf_counter()
    results = run_adapt(cache, run, work / "out", config, overwrite=True)
    total = time.perf_counter() - t
    print(json.dumps({"setup_s": round(setup, 1), "run_adapt_s": round(total, 2), "timings_s": results["timings_s"],
                      "routers": len(config.budgets) * config.seeds, "records": len(results["records"]),
                      "micro_avg_B50": results["summary"]["50"]["micro"]["Average"]}, indent=1))


if __name__ == "__main__":
    main()
