"""`hyre` and `micro-hyre` (Lee et al. 2024): a fixed set of heads reweighted by their posterior on a few
labelled TEST pairs of the user, then scored on that user's other test pairs (micro.router.hyre)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..draws import draw_shots
from ..hyre import hyre_margins, hyre_weights
from ..plugin import Budget, Plugin, Sweep
from .stage1 import baselines


@dataclass
class HyreOptions:
    shots: int = 16
    """Labelled test pairs per user (paper: 16, at most half of the user's test pairs)."""

    def __post_init__(self) -> None:
        if int(self.shots) < 0:
            raise ValueError(f"hyre: shots must be >= 0, not {self.shots!r}")


class Hyre(Plugin):
    """HyRe on the shared-base ensemble's heads."""

    Options = HyreOptions
    key = "hyre"

    def heads(self, sweep: Sweep) -> torch.Tensor:
        with torch.no_grad():
            return baselines(sweep)["ensemble"].head_margins(sweep.test.diff)

    def prepare(self, sweep: Sweep) -> None:
        margins = self.heads(sweep)
        shots = {s: draw_shots(sweep.test, s, self.options.shots) for s in sweep.seeds}
        sweep.scores.shots[self.name] = shots
        self.values = {}
        for s in sweep.seeds:
            self.values[s] = {}
            for a in sweep.scores.rows:
                rows = sweep.scores.eval_rows(self.name, s, a)
                w = hyre_weights(margins[shots[s][a]])
                self.values[s][a] = float((hyre_margins(margins[rows], w) > 0).float().mean())

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return self.values


class MicroHyre(Hyre):
    """HyRe on MiCRo's stage-1 heads (masked heads left out)."""

    def heads(self, sweep: Sweep) -> torch.Tensor:
        return sweep.test_margins[:, ~sweep.model.head_mask]
