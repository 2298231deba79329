"""A stage-1 start that uses the pairs: heads from clusters of the router inputs (a diagnostic, not a default).

    python benchmarks/cluster_start.py --planted prompt:600:64 --seeds 5
    python benchmarks/cluster_start.py --cache demo.h5 --seeds 3

The router inputs (distinct rows, standardised) are split into K clusters by k-means (k-means++ seeding,
weighted by pair counts); cluster c's head starts at m_c / |m_c|^2, m_c the mean difference vector of its
pairs (so its own pairs have margins ~1 on average). The search then runs from that start alone (one
restart) and is compared with the default search, both without the refit (`refit=False`, so each is the
weights the held-out slice kept). One JSON line per fit: stage1-best (per group, the best head's test
accuracy, averaged), the routed test accuracy, the held-out NLL each search kept, and on planted caches
the smallest cosine between a planted direction and its matched head.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, match_heads, simulate
from micro.heads.train import _fit, build_model, router_table


def kmeans(x: torch.Tensor, weight: torch.Tensor, k: int, seed: int, iters: int = 30) -> torch.Tensor:
    """Cluster labels of the rows of x (weighted k-means, k-means++ seeding)."""
    gen = torch.Generator().manual_seed(seed)
    centres = [x[torch.multinomial(weight, 1, generator=gen)].squeeze(0)]
    for _ in range(k - 1):
        d2 = torch.cdist(x, torch.stack(centres)).pow(2).min(1).values
        centres.append(x[torch.multinomial(weight * d2 + 1e-12, 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        label = torch.cdist(x, c).argmin(1)
        for j in range(k):
            rows = label == j
            if rows.any():
                c[j] = (x[rows] * weight[rows, None]).sum(0) / weight[rows].sum()
    return torch.cdist(x, c).argmin(1)


def cluster_heads(train, config: MixtureConfig) -> torch.Tensor:
    table, index = router_table(train, config.router_input)
    x = table.float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    label = kmeans(x, torch.bincount(index, minlength=len(table)).float(), config.k, config.seed)[index]
    heads = torch.zeros(config.k, train.diff.shape[1])
    for j in range(config.k):
        rows = label == j
        if rows.any():
            mean = train.diff[rows].float().mean(0)
            heads[j] = mean / mean.pow(2).sum().clamp_min(1e-12)
    return heads


def compare(train, test, seed: int, truth=None) -> dict:
    config = MixtureConfig(seed=seed, refit=False).resolved(train)
    start = build_model(replace(config, head_init=(1.0,)), train.hidden_size)
    with torch.no_grad():
        start.heads.copy_(cluster_heads(train, config))
    fits = {"default": fit_mixture(train, config), "cluster": _fit(train, replace(config, restarts=1), None, init=start)}
    row = {"seed": seed}
    for name, model in fits.items():
        scores = evaluate(model, test, config.router_input)["average"]
        row[name] = {"stage1_best": round(scores["best_accuracy"], 4), "routed": round(scores["routed_accuracy"], 4),
                     "heldout_nll": model.fit_record.best_heldout_nll}
        if truth is not None:
            row[name]["head_cos"] = round(min(match_heads(truth, model.head_vectors())["cosine"]), 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planted", default=None, help="REGIME:PAIRS:DIM, a planted cache per seed (simulate)")
    p.add_argument("--cache", default=None, help="an embedded cache; stage 1 fitted with each seed")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    if (args.planted is None) == (args.cache is None):
        p.error("give one of --planted REGIME:PAIRS:DIM or --cache PATH")
    torch.set_num_threads(1)
    if args.cache:  # one embedded cache, stage 1 fitted with each seed
        train, test = load_split(Path(args.cache), "train"), load_split(Path(args.cache), "test")
        for seed in range(args.seeds):
            print(json.dumps({"cache": args.cache, **compare(train, test, seed)}), flush=True)
        return
    regime, pairs, dim = args.planted.split(":")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "planted.h5"
            truth = simulate(cache, regime=regime, pairs=int(pairs), dim=int(dim), seed=seed)
            train, test = load_split(cache, "train"), load_split(cache, "test")
        print(json.dumps({"planted": args.planted, **compare(train, test, seed, truth)}), flush=True)


if __name__ == "__main__":
    main()
