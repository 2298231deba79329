"""Which of a user's pairs to ask for: `micro adapt --acquire random|uncertainty|disagreement|bald`.

One sequence of asked pairs per (seed, attribute), up to the largest budget; every budget reads its prefix,
so budgets are nested (B = 25's pairs are the first 25 of B = 50's) for every rule, as for the random draw.
'random' is the seeded permutation of micro.router.draws. The active rules start from its first `batch`
pairs, then repeatedly re-adapt the model on the pairs asked so far and ask for `batch` more pool pairs:
the first floor(random_share x batch) of them next in the seed's random order (insurance against a rule
that only chases one kind of pair), the rest the pool pairs that score highest under the rule:
- 'uncertainty': the smallest |routed margin| sum_k w_k m_k (the adapted model is least sure of them);
- 'disagreement': the largest weighted disagreement among the heads' signs, 1 - |sum_k w_k sign(m_k)|;
- 'bald': the mutual information between the pair's label and which head is right, with the adapted
  router's weights w as the belief over heads and sigmoid(m_k) as head k's probability that the pair is
  ordered as labelled: H(sum_k w_k p_k) - sum_k w_k H(p_k) (Houlsby et al. 2011, "BALD"). It is large
  for a pair on which the likely heads confidently disagree, and small for a pair every head is unsure
  of (label noise tells nothing about the mixture), which 'uncertainty' asks for first.
The pool of an attribute is its TRAIN pairs not yet asked for (never a test pair). Ties are broken by the
seed's random order, so every draw is reproducible per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from .config import ACQUIRE_RULES
from .draws import attribute_rows, check_budgets, draw_budget_pairs


@dataclass
class AcquireOptions:
    batch: int = 5
    """Pairs per user asked per round by an active rule (the first round is the seeded random draw)."""

    random: float = 0.5
    """Share of each round's pairs taken next in the seed's random order instead of by the rule (floored)."""

    def __post_init__(self) -> None:
        if int(self.batch) < 1 or not 0.0 <= float(self.random) <= 1.0:
            raise ValueError(f"acquire: batch must be >= 1 and random in [0, 1], not {self.batch!r}, {self.random!r}")


#: Given the pairs asked so far (one {attribute: rows} per seed), one scorer per seed: pool rows -> [n]
#: informativeness, higher asked first.
Informativeness = Callable[[list[dict[int, np.ndarray]]], list[Callable[[np.ndarray], torch.Tensor]]]


def uncertainty(weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] minus the |routed margin| (weights, margins: [n, K])."""
    return -(weights * margins).sum(-1).abs()


def disagreement(weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] 1 - |sum_k w_k sign(m_k)|: 0 when all weighted heads agree, 1 when their mass splits evenly."""
    return 1.0 - (weights * margins.sign()).sum(-1).abs()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats (0 at p = 0 or 1)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def bald(weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] I(label; head) = H(sum_k w_k p_k) - sum_k w_k H(p_k), p_k = sigmoid(m_k), in nats."""
    p = torch.sigmoid(margins.double())
    w = weights.double()
    return _entropy((w * p).sum(-1)) - (w * _entropy(p)).sum(-1)


SCORES = {"uncertainty": uncertainty, "disagreement": disagreement, "bald": bald}


def acquire_pairs(rule: str, split: CacheSplit, seeds: list[int], budgets: list[int], batch: int, random_share: float,
                  informativeness: Informativeness | None = None, with_random_mask: bool = False):
    """{budget: one {attribute: `budget` train rows} per seed}, chosen by `rule` (see the module
    docstring); every budget is a prefix of the largest one. With `with_random_mask`, also the same
    structure of boolean masks: True where a pair came from the seed's random order (the first batch and
    each round's random share; every pair under 'random'), the pairs that are a fair sample of the pool."""
    if rule not in ACQUIRE_RULES:
        raise ValueError(f"acquire must be one of {', '.join(ACQUIRE_RULES)}, not {rule!r}")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"acquire random share must be in [0, 1], not {random_share!r}")
    check_budgets(split, list(budgets), "the split pairs are asked from")
    top = max(budgets)
    pools = attribute_rows(split)
    orders = [draw_budget_pairs(split, s, max(len(idx) for idx in pools.values())) for s in seeds]  # full permutations
    active = rule != "random" and top > batch
    asked = [{a: order[a][:batch if active else top] for a in pools} for order in orders]
    at_random = [{a: np.ones(len(rows), dtype=bool) for a, rows in d.items()} for d in asked]
    if active:
        if informativeness is None:
            raise ValueError(f"acquire rule {rule!r} needs the model's informativeness scores")
        n_random = int(batch * random_share)
        while len(next(iter(asked[0].values()))) < top:
            scorers = informativeness(asked)
            for i, order in enumerate(orders):
                for a in pools:
                    pool = order[a][~np.isin(order[a], asked[i][a])]  # the seed's random order: ties go to the earlier row
                    rest = pool[n_random:]
                    with torch.no_grad():
                        score = scorers[i](rest).double().numpy()
                    best = rest[np.argsort(-score, kind="stable")[:batch - n_random]]
                    asked[i][a] = np.concatenate([asked[i][a], pool[:n_random], best])
                    at_random[i][a] = np.concatenate([at_random[i][a], np.ones(len(pool[:n_random]), bool), np.zeros(len(best), bool)])
    rows = {b: [{a: r[:b] for a, r in d.items()} for d in asked] for b in budgets}
    if not with_random_mask:
        return rows
    return rows, {b: [{a: m[:b] for a, m in d.items()} for d in at_random] for b in budgets}
