"""`micro-refine` (beyond the paper): adapt the reward itself, not only the routing, from the same budget.

Per user one head whose prior mean is the stage-1 heads mixed by micro's weights, averaged over the user's
first PRIOR_PAIRS training prompts in the seed's order (no labels), fitted MAP on the budget pairs:
head = s * prior + delta (micro.router.refine). Under an active `--acquire` rule the correction is fitted
on the pairs from the seed's random order only (a fair sample of the user's pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..draws import draw_budget_pairs
from ..plugin import Budget, Plugin, Sweep
from ..refine import fit_refinement
from .common import per_attribute, positive_grid, problems
from .micro import weights

#: the prior head averages micro's routing over this many training prompts of the user (not the budget's)
PRIOR_PAIRS = 256
#: candidate prior precisions, in units of 1 / mean ||d||^2 (budget-bt's grid too)
GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 1000.0)


@dataclass
class RefineOptions:
    grid: tuple[float, ...] = GRID
    """Candidate prior precisions of the correction, in units of 1 / mean ||d||^2; chosen per user by leave-one-out."""

    scale_precision: float = 1.0
    """The routed prior is scaled by a fitted s ~ N(1, 1 / this): a wrong prior can shrink to 0."""

    def __post_init__(self) -> None:
        self.grid = positive_grid("micro-refine", self.grid)
        if not float(self.scale_precision) > 0:
            raise ValueError(f"micro-refine: scale_precision must be > 0, not {self.scale_precision!r}")


class MicroRefine(Plugin):
    Options = RefineOptions

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        p = problems(sweep, budget)
        if p is None:
            return {}
        train, seeds = sweep.eval_train, sweep.seeds
        with torch.no_grad():
            mean_weights = []
            for i, s in enumerate(seeds):
                prior_rows = draw_budget_pairs(train, s, PRIOR_PAIRS)
                mean_weights.append(torch.stack([weights(sweep, budget, i, train, prior_rows[a]).mean(0) for a in p.attributes]))
            prior_heads = torch.stack([w @ sweep.model.head_vectors() for w in mean_weights])  # [S, A, d]
            prior = (p.diff @ prior_heads.reshape(len(p.diff), -1, 1)).squeeze(-1)  # [S*A, B]
        ref = fit_refinement(p.diff, prior, self.options.grid, scale_precision=self.options.scale_precision, fit_on=p.fit_on)
        heads = ref.scale.reshape(len(seeds), -1, 1) * prior_heads + ref.delta.reshape(len(seeds), len(p.attributes), -1)
        names = [sweep.test.attributes[a] for a in p.attributes]
        budget.shared["refine.heads"] = {s: {"head": heads[i], "attributes": names,
                                             "scale": ref.scale.reshape(len(seeds), -1)[i].tolist(),
                                             "precision": ref.precision.reshape(len(seeds), -1)[i].tolist()} for i, s in enumerate(seeds)}
        flat = heads.reshape(len(p.diff), -1)
        return per_attribute(sweep, p, lambda u, rows: sweep.test.diff[rows] @ flat[u])
