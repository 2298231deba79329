"""Which of a user's pairs to ask for: `micro adapt --acquire random|uncertainty|disagreement`.

'random' is the seeded draw of micro.router.draws (nested across budgets). The active rules start from
the same seeded random batch of `batch` pairs per attribute, then repeatedly re-adapt the model on the
pairs asked so far and ask for the `batch` pool pairs that score highest:
- 'uncertainty': the smallest |routed margin| sum_k w_k m_k (the adapted model is least sure of them);
- 'disagreement': the largest weighted disagreement among the heads' signs, 1 - |sum_k w_k sign(m_k)|
  (the heads the router mixes disagree on the pair, so its label moves the router most).
The pool of an attribute is its TRAIN pairs not yet asked for (never a test pair). Ties are broken by
the seed's random order, so every draw is reproducible per seed. Active draws are not nested across
budgets: each budget runs its own sequence of rounds from the same first batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from .config import ACQUIRE_RULES
from .draws import attribute_rows, draw_budget_pairs


#: Given the pairs asked so far (one {attribute: rows} per seed), one scorer per seed: pool rows -> [n]
#: informativeness, higher asked first.
Informativeness = Callable[[list[dict[int, np.ndarray]]], list[Callable[[np.ndarray], torch.Tensor]]]


def uncertainty(weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] minus the |routed margin| (weights, margins: [n, K])."""
    return -(weights * margins).sum(-1).abs()


def disagreement(weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] 1 - |sum_k w_k sign(m_k)|: 0 when all weighted heads agree, 1 when their mass splits evenly."""
    return 1.0 - (weights * margins.sign()).sum(-1).abs()


SCORES = {"uncertainty": uncertainty, "disagreement": disagreement}


def acquire_pairs(rule: str, split: CacheSplit, seeds: list[int], budget: int, batch: int,
                  informativeness: Informativeness | None = None) -> list[dict[int, np.ndarray]]:
    """One {attribute: `budget` train rows} per seed, chosen by `rule` (see the module docstring)."""
    if rule not in ACQUIRE_RULES:
        raise ValueError(f"acquire must be one of {', '.join(ACQUIRE_RULES)}, not {rule!r}")
    if rule == "random" or budget <= batch:
        return [draw_budget_pairs(split, s, budget) for s in seeds]
    if informativeness is None:
        raise ValueError(f"acquire rule {rule!r} needs the model's informativeness scores")
    pools = attribute_rows(split)
    draws = [draw_budget_pairs(split, s, batch) for s in seeds]
    orders = {(s, a): idx[np.random.default_rng([s, a, 0xAC9]).permutation(len(idx))] for s in seeds for a, idx in pools.items()}
    size = batch
    while size < budget:
        take = min(batch, budget - size)
        scorers = informativeness(draws)
        for i, s in enumerate(seeds):
            for a in pools:
                order = orders[(s, a)]
                pool = order[~np.isin(order, draws[i][a])]  # the seed's random order: ties go to the earlier row
                with torch.no_grad():
                    score = scorers[i](pool).double().numpy()
                best = np.argsort(-score, kind="stable")[:take]
                draws[i][a] = np.concatenate([draws[i][a], pool[best]])
        size += take
    return draws
