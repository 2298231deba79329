"""`micro-refine` (beyond the paper): adapt the reward itself, not only the routing, from the same budget.

Per context (attribute) a head whose prior mean is the adapted router's mixture of the frozen stage-1
heads, fitted MAP on that attribute's B budget pairs:

    margin(pair) = s * sum_k f_k(x, c) m_k(pair) + delta . d,
    delta ~ N(0, I / lambda),  s ~ N(1, 1 / scale_precision),

minimising the BT loss plus both penalties. lambda is chosen per attribute by cross-validated BT loss on the
budget pairs (see baselines.fit_map_heads), so a small budget keeps the head at the routed mixture and a
large one lets the pairs move it; s lets a prior that the pairs contradict shrink towards 0, where the
head becomes `budget-bt`. The fit is exact in the span of the pairs, so it costs the same at d = 3072.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .baselines import fit_map_heads


@dataclass
class Refinement:
    """Per-attribute corrections on top of a routed mixture: margin = scale * routed + delta . d."""

    delta: torch.Tensor  # [A, d]
    scale: torch.Tensor  # [A]
    precision: torch.Tensor  # [A] chosen c

    def margins(self, routed_margin: torch.Tensor, diff: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        """[n] refined margins of pairs of the given attribute indices (rows of delta/scale)."""
        return self.scale[attribute] * routed_margin + (diff * self.delta[attribute]).sum(-1)


def fit_refinement(
    diff: torch.Tensor,
    routed_margins: torch.Tensor,
    grid: tuple[float, ...],
    *,
    scale_precision: float = 1.0,
) -> Refinement:
    """diff [P, n, d] budget pairs of P (attribute, seed) problems, routed_margins [P, n] the adapted
    router's mixture margins on them -> P refinements (flattened: delta [P, d], scale [P])."""
    sol = fit_map_heads(diff, grid, prior_margins=routed_margins, scale_precision=scale_precision)
    return Refinement(delta=sol.delta, scale=sol.scale, precision=sol.precision)
