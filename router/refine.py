"""`micro-refine` (beyond the paper): adapt the reward itself, not only the routing, from the same budget.

Per context (attribute) one head whose prior mean is the stage-1 heads mixed by micro's weights (the
adapted router's times the context's Hedge weights over its budget pairs), averaged over that context's first 256 training pairs in the seed's
order (their prompts, no labels) (w_prior = sum_k fbar_k w_k), fitted MAP on the
B budget pairs:

    head = s * w_prior + delta,   delta ~ N(0, I / lambda),  s ~ N(1, 1 / scale_precision),

minimising the BT loss plus both penalties. lambda is chosen per context by held-out (leave-one-out) BT
loss on the budget pairs (baselines.fit_map_heads), together with whether to keep the prior at all: a small budget
keeps the head near the routed mixture, a large one lets the pairs move it, and a prior the pairs
contradict is dropped (s = 0: the head becomes `budget-bt`). The fit is exact in the span of the pairs,
so it costs the same at d = 3072.

Under an active `--acquire` rule the router learns from every asked pair, but the correction (s, delta,
lambda) is fitted and chosen on the pairs that came from the seed's random order only (the first batch
and each round's random share): pairs asked where the heads disagree are what the router needs, but a
biased sample of the user's pairs for fitting a reward (docs/results.md). Under 'random' that is every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .baselines import fit_map_heads


@dataclass
class Refinement:
    """Per-problem corrections of a prior head: head = scale * prior_head + delta."""

    delta: torch.Tensor  # [P, d]
    scale: torch.Tensor  # [P] (0 where the selection dropped the prior)
    precision: torch.Tensor  # [P] chosen c


def fit_refinement(diff: torch.Tensor, prior_margins: torch.Tensor, grid: tuple[float, ...], *, scale_precision: float = 1.0,
                   fit_on: torch.Tensor | None = None) -> Refinement:
    """diff [P, n, d] budget pairs of P (context, seed) problems, prior_margins [P, n] the prior head's
    margins on them -> P refinements (fit_map_heads)."""
    sol = fit_map_heads(diff, grid, prior_margins=prior_margins, scale_precision=scale_precision, fit_on=fit_on)
    return Refinement(delta=sol.delta, scale=sol.scale, precision=sol.precision)
