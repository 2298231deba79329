"""The upper lines: `stage1-best` (MiCRo's best stage-1 head per user, chosen on the test pairs) and
`oracle` (a BT head per user on all of the user's training pairs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..baselines import fit_oracle_head
from ..draws import attribute_rows
from ..plugin import Budget, Plugin, Sweep
from .common import positive_grid


class Stage1Best(Plugin):
    def prepare(self, sweep: Sweep) -> None:
        kept = sweep.test_margins[:, ~sweep.model.head_mask]
        self.values = {a: float((kept[rows] > 0).float().mean(0).max()) for a, rows in sweep.scores.rows.items()}

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return {s: self.values for s in sweep.seeds}


@dataclass
class OracleOptions:
    grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    """Candidate precisions (units of 1 / mean ||d||^2), chosen on a 20 % hold-out of the user's pairs."""

    def __post_init__(self) -> None:
        self.grid = positive_grid("oracle", self.grid)


class Oracle(Plugin):
    Options = OracleOptions

    def prepare(self, sweep: Sweep) -> None:
        self.margins = None
        if sweep.eval_train is None:
            return
        self.margins = torch.full((len(sweep.test),), float("nan"))
        train_rows = attribute_rows(sweep.eval_train)
        for a, rows in sweep.scores.rows.items():
            if a not in train_rows:
                sweep.notes.append(f"attribute {sweep.test.attributes[a]!r} has no training pairs: no oracle.")
                continue
            head, _ = fit_oracle_head(sweep.eval_train.diff[train_rows[a]], self.options.grid)
            self.margins[rows] = sweep.test.diff[rows] @ head

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return {} if self.margins is None else {s: self.margins for s in sweep.seeds}
