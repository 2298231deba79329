"""Stage-1 speed: how long `fit_mixture` takes on cache shapes we care about, on this machine.

    python benchmarks/fit_mixture_speed.py helpsteer2        # 23.5K train pairs, d=3072, K=10, full default fit
    python benchmarks/fit_mixture_speed.py scaling           # 1 epoch per shape: time vs pairs, d, K
    python benchmarks/fit_mixture_speed.py pref700k          # 700K pairs, d=3072: 1 epoch, peak RSS (needs ~12 GiB)

`helpsteer2` writes a simulated cache (5 planted groups) with `micro simulate`'s writer, loads it
with `load_split` (timed separately) and runs the default MixtureConfig. `scaling` and `pref700k`
build the CacheSplit in RAM (random float32 tensors), because only the fit is timed there.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.embedcache.store import CacheSplit
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def random_split(n: int, d: int, prompts: int, seed: int = 0) -> CacheSplit:
    g = torch.Generator().manual_seed(seed)
    diff = torch.empty(n, d)
    for lo in range(0, n, 65536):  # fill in blocks: no second [n, d] temporary
        diff[lo : lo + 65536] = torch.randn(min(65536, n - lo), d, generator=g)
    return CacheSplit(
        split="train",
        diff=diff,
        prompt_index=torch.randint(0, prompts, (n,), generator=g),
        prompt_embedding=torch.randn(prompts, d, generator=g),
        context_index=torch.full((n,), -1),
        context_embedding=None,
        attribute=torch.zeros(n, dtype=torch.long),
        context_id=torch.full((n,), -1),
        attributes=["all"],
        meta={},
    )


def helpsteer2(epochs: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hs2.h5"
        t = time.perf_counter()
        # 26.1K pairs with 10 % of prompts held out = ~23.5K train pairs, as HelpSteer2's train set
        simulate(path, groups=5, dim=3072, pairs=26100, pairs_per_prompt=3, test_fraction=0.1)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        train, test = load_split(path, "train"), load_split(path, "test")
        load_s = time.perf_counter() - t
    config = MixtureConfig() if epochs is None else MixtureConfig(epochs=epochs)
    losses = []
    t = time.perf_counter()
    model = fit_mixture(train, config, log=lambda e: losses.append(round(e["loss"], 4)))
    fit_s = time.perf_counter() - t
    result = evaluate(model, test)
    return {
        "case": "helpsteer2-shaped",
        "pairs": len(train),
        "d": train.hidden_size,
        "k": config.k,
        "epochs": config.epochs,
        "steps": model.train_steps,
        "fit_seconds": round(fit_s, 2),
        "ms_per_step": round(1e3 * fit_s / model.train_steps, 2),
        "load_seconds": round(load_s, 2),
        "write_seconds": round(write_s, 2),
        "train_loss_per_epoch": losses,
        "test_best_accuracy": round(result["average"]["best_accuracy"], 4),
        "test_routed_accuracy": round(result["average"]["routed_accuracy"], 4),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }


def one_epoch(n: int, d: int, k: int, method: str = "micro", prompts: int | None = None) -> dict:
    split = random_split(n, d, prompts or max(1, n // 3))
    config = MixtureConfig(method=method, k=k, epochs=1)
    t = time.perf_counter()
    model = fit_mixture(split, config)
    s = time.perf_counter() - t
    return {"method": method, "pairs": n, "d": d, "k": k, "steps": model.train_steps, "epoch_seconds": round(s, 2),
            "ms_per_step": round(1e3 * s / model.train_steps, 2)}


def scaling() -> list[dict]:
    rows = []
    for n, d, k in [(5000, 3072, 10), (23500, 3072, 10), (23500, 768, 10), (23500, 4096, 10), (23500, 3072, 1), (23500, 3072, 5), (23500, 3072, 20)]:
        rows.append(one_epoch(n, d, k))
        print(json.dumps(rows[-1]), flush=True)
    for method in ("single", "static", "ensemble"):
        rows.append(one_epoch(23500, 3072, 10, method))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pref700k(prompts: int, epochs: int | None, pairs: int = 700_000) -> dict:
    """A full default fit (or `epochs` epochs) on a preference-700K-shaped split built in RAM."""
    t = time.perf_counter()
    split = random_split(pairs, 3072, prompts)
    data_gib = (split.diff.numel() + split.prompt_embedding.numel()) * 4 / 2**30
    build_s = time.perf_counter() - t
    config = MixtureConfig() if epochs is None else MixtureConfig(epochs=epochs)
    t = time.perf_counter()
    model = fit_mixture(split, config)
    s = time.perf_counter() - t
    return {"case": f"preference-700K-shaped, {config.epochs or 'early-stopping'} epoch(s)", "pairs": pairs, "d": 3072, "k": 10,
            "data_gib": round(data_gib, 2), "stop": model.fit_record.stop_reason, "best_step": model.fit_record.best_step,
            "prompts": prompts, "epochs": config.epochs, "steps": model.train_steps, "fit_seconds": round(s, 1),
            "ms_per_step": round(1e3 * s / model.train_steps, 2), "build_seconds": round(build_s, 1),
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["helpsteer2", "scaling", "pref700k"])
    p.add_argument("--epochs", type=int, default=None, help="helpsteer2, pref700k: override MixtureConfig.epochs")
    p.add_argument("--prompts", type=int, default=100_000, help="pref700k: distinct prompts (router table rows)")
    p.add_argument("--pairs", type=int, default=700_000, help="pref700k: pairs (a smaller run shows the fit's memory over the data)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads while fitting: {MixtureConfig().threads}", file=sys.stderr)
    if args.case == "helpsteer2":
        print(json.dumps(helpsteer2(args.epochs)))
    elif args.case == "scaling":
        scaling()
    else:
        print(json.dumps(pref700k(args.prompts, args.epochs, args.pairs)))


if __name__ == "__main__":
    main()
