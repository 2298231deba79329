"""`evaluate`: per-head x per-attribute accuracy (paper Tables 7/8), best head and routed accuracy
(Figure 2), and two health checks of stage 1: router entropy and head agreement."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..embedcache.store import CacheSplit
from .model import MixtureRewardModel
from ..embedcache.store import router_table


@torch.no_grad()
def _router_log_weights(model: MixtureRewardModel, split: CacheSplit, source: str, block: int = 65536) -> torch.Tensor:
    table, index = router_table(split, source) if model.router is not None else (split.diff, torch.arange(len(split)))
    out = [model.log_weights(table[index[lo : lo + block]].float()) for lo in range(0, len(split), block)]
    return torch.cat(out) if out else torch.zeros(0, model.k)


@torch.no_grad()
def evaluate(model: MixtureRewardModel, split: CacheSplit, router_input: str = "prompt") -> dict:
    """Accuracy = fraction of pairs whose chosen response scores above the rejected one (ties count wrong).

    Returns {"per_attribute": {attr: {head_accuracy [K], best_head, best_accuracy, routed_accuracy,
    pairs}}, "average": {best_accuracy, routed_accuracy} (unweighted mean over attributes, as the
    paper's tables), "overall": {routed_accuracy, loss, pairs} (pooled over pairs; loss = mixture NLL
    in nats), "router_entropy" (mean normalised entropy of the weights, 1.0 = uniform; None for K=1),
    "head_agreement" (mean pairwise sign agreement of heads' margins; 1.0 for K=1)}.
    """
    model = model.eval()
    margins = split.diff.float() @ model.head_vectors().T  # [n, K]
    log_w = _router_log_weights(model, split, router_input)
    weights = log_w.exp()
    routed = (weights * margins).sum(-1)
    head_correct = margins > 0
    routed_correct = routed > 0

    per_attribute = {}
    for a, name in enumerate(split.attributes):
        mask = split.attribute == a
        count = int(mask.sum())
        if count == 0:
            continue
        head_acc = head_correct[mask].float().mean(0).tolist()
        best = max(range(len(head_acc)), key=lambda k: head_acc[k])
        per_attribute[name] = {
            "head_accuracy": head_acc,
            "best_head": best,
            "best_accuracy": head_acc[best],
            "routed_accuracy": float(routed_correct[mask].float().mean()),
            "pairs": count,
        }
    attrs = list(per_attribute.values())
    average = {
        "best_accuracy": sum(v["best_accuracy"] for v in attrs) / max(1, len(attrs)),
        "routed_accuracy": sum(v["routed_accuracy"] for v in attrs) / max(1, len(attrs)),
    }
    k = model.k
    n = len(split)
    if k > 1 and n:
        entropy = float(-(weights * log_w).sum(-1).mean() / math.log(k))
        signs = (margins > 0).float()
        same = signs.T @ signs + (1 - signs).T @ (1 - signs)  # [K, K] counts of equal signs
        off = ~torch.eye(k, dtype=torch.bool)
        agreement = float(same[off].mean() / n)
    else:
        entropy, agreement = None, 1.0
    loss = float(-torch.logsumexp(log_w + F.logsigmoid(margins), -1).mean()) if n else float("nan")
    return {
        "per_attribute": per_attribute,
        "average": average,
        "overall": {"routed_accuracy": float(routed_correct.float().mean()) if n else float("nan"), "loss": loss, "pairs": n},
        "router_entropy": entropy,
        "head_agreement": agreement,
    }
