"""Merge heads whose predictions are highly correlated (paper appendix C.3).

Correlation = cosine similarity of two heads' margin vectors over the evaluation pairs (no labels are
used, so scoring the test pairs' predictions leaks nothing). Heads whose cosine exceeds the threshold are
joined (transitively: connected components); a group becomes one head, the mean of its head vectors.
The router keeps its hidden layer; a group's output logit is the mean of its members' logits plus
log(group size), so a group whose members the router weighed alike keeps its total weight exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..embedcache.store import CacheSplit, load_split
from .config import MixtureConfig
from .metrics import evaluate
from .model import MixtureRewardModel, load_model, save_model
from .run import holdout_by_prompt


@torch.no_grad()
def head_cosines(model: MixtureRewardModel, split: CacheSplit) -> torch.Tensor:
    """[K, K] cosine similarity of the heads' margins on the split's pairs."""
    margins = split.diff.float() @ model.head_vectors().T
    unit = margins / margins.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return unit.T @ unit


def merge_groups(cosines: torch.Tensor, threshold: float) -> list[list[int]]:
    """Connected components of the graph 'cosine > threshold', each sorted, ordered by first head."""
    k = cosines.shape[0]
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(k):
        for j in range(i + 1, k):
            if float(cosines[i, j]) > threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


@torch.no_grad()
def merge_heads(model: MixtureRewardModel, groups: list[list[int]]) -> MixtureRewardModel:
    """A model with one head per group (see the module docstring)."""
    arch = {**model.architecture(), "k": len(groups), "prior_scale": 0.0}
    merged = MixtureRewardModel.from_architecture(arch)
    vectors = model.head_vectors()
    merged.heads.copy_(torch.stack([vectors[g].mean(0) for g in groups]))
    merged.prior.zero_()
    if model.router is not None:
        src, dst = model.router.net, merged.router.net
        for a, b in zip(src[:-1], dst[:-1]):
            b.load_state_dict(a.state_dict())
        dst[-1].weight.copy_(torch.stack([src[-1].weight[g].mean(0) for g in groups]))
        dst[-1].bias.copy_(torch.stack([src[-1].bias[g].mean() + math.log(len(g)) for g in groups]))
    if model.static_logits is not None:
        merged.static_logits.copy_(torch.stack([model.static_logits[g].mean() + math.log(len(g)) for g in groups]))
    return merged.eval()


def _evaluation_split(cache_path: str | os.PathLike, name: str, seed: int) -> CacheSplit:
    """The split a run was evaluated on ('heldout': the same 10 % of train prompts run_fit_mixture held out)."""
    if name == "heldout":
        return holdout_by_prompt(load_split(cache_path, "train"), 0.1, seed)[1]
    return load_split(cache_path, name)


def merge_run(cache_path: str | os.PathLike, run_dir: str | os.PathLike, threshold: float) -> dict[str, Any]:
    """Merge a finished run's correlated heads in place (the unmerged model moves to RUN/unmerged/) and
    add a "merge" section to RUN/metrics.json: threshold, cosines, groups, K before/after and the
    average best-head / routed accuracy before and after on the run's evaluation split."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--merge-heads is a cosine threshold in [-1, 1], not {threshold!r}")
    run_dir = Path(run_dir)
    model, run_config = load_model(run_dir)
    config = MixtureConfig.from_dict(run_config["config"])
    split = _evaluation_split(cache_path, run_config.get("eval_split", "test"), config.seed)
    cosines = head_cosines(model, split)
    groups = merge_groups(cosines, threshold)
    before = evaluate(model, split, config.router_input)
    report: dict[str, Any] = {
        "threshold": threshold, "split": split.split, "k_before": model.k, "k_after": len(groups), "groups": groups,
        "cosine": [[round(float(c), 4) for c in row] for row in cosines], "before": before["average"],
    }
    if len(groups) < model.k:
        merged = merge_heads(model, groups)
        after = evaluate(merged, split, config.router_input)
        report["after"] = after["average"]
        report["per_attribute_after"] = {a: {k: v[k] for k in ("best_accuracy", "routed_accuracy")}
                                         for a, v in after["per_attribute"].items()}
        save_model(model, run_dir / "unmerged", run_config)
        save_model(merged, run_dir, {**run_config, "merge": {k: report[k] for k in ("threshold", "k_before", "k_after", "groups")}})
    else:
        report["after"] = before["average"]
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["merge"] = report
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return report
