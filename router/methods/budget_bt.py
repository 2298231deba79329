"""`budget-bt`: a fresh BT head per user on the budget pairs alone (MAP, precision by leave-one-out)."""

from __future__ import annotations

from dataclasses import dataclass

from ..baselines import fit_budget_bt
from ..plugin import Budget, Plugin, Sweep
from .common import per_attribute, positive_grid, problems
from .refine import GRID


@dataclass
class BudgetBtOptions:
    grid: tuple[float, ...] = GRID
    """Candidate prior precisions, in units of 1 / mean ||d||^2; chosen per user by leave-one-out."""

    def __post_init__(self) -> None:
        self.grid = positive_grid("budget-bt", self.grid)


class BudgetBt(Plugin):
    Options = BudgetBtOptions

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        p = problems(sweep, budget)
        if p is None:
            return {}
        heads = fit_budget_bt(p.diff, self.options.grid).delta
        return per_attribute(sweep, p, lambda u, rows: sweep.test.diff[rows] @ heads[u])
