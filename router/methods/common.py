"""What several methods read for one budget: the budget pairs of each (seed, attribute) problem."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..draws import draw_budget_pairs
from ..plugin import Budget, Sweep


@dataclass
class Problems:
    """The (seed, attribute) problems of one budget on the eval cache's train split, seed-major."""

    attributes: list[int]  # attribute ids of the eval split with budget pairs
    rows: torch.Tensor  # [S, A, B] train rows
    diff: torch.Tensor  # [S * A, B, d] their difference vectors
    fit_on: torch.Tensor | None  # [S * A, B] True where the pair came from the random order (None: all)

    def index(self, i: int, j: int) -> int:
        return i * len(self.attributes) + j


def positive_grid(method: str, grid) -> tuple[float, ...]:
    """`grid` as a tuple of floats; ValueError naming `method` unless every value is positive."""
    grid = tuple(float(c) for c in grid)
    if not grid or min(grid) <= 0:
        raise ValueError(f"{method}: grid must be positive numbers, not {grid!r}")
    return grid


def problems(sweep: Sweep, budget: Budget) -> Problems | None:
    """The budget's problems (None when the eval cache has no train split); shared by every method."""
    def make() -> Problems | None:
        train = sweep.eval_train
        if train is None:
            return None
        own = train is sweep.train
        draws = budget.draws if own else [draw_budget_pairs(train, s, budget.size) for s in sweep.seeds]
        attrs = [a for a in sorted(sweep.scores.rows) if a in draws[0]]
        rows = torch.as_tensor(np.stack([np.stack([d[a] for a in attrs]) for d in draws]))
        diff = train.diff[rows.reshape(-1)].reshape(len(draws) * len(attrs), budget.size, -1)
        fit_on = (torch.as_tensor(np.stack([np.stack([m[a] for a in attrs]) for m in budget.at_random])).reshape(-1, budget.size)
                  if own else None)
        return Problems(attrs, rows, diff, fit_on)
    return budget.once("problems", make)


def per_attribute(sweep: Sweep, problems: Problems, margins_of) -> dict[int, torch.Tensor]:
    """{seed: [n_test] margins}: margins_of(u, test rows) for each problem u on its attribute's test rows
    (NaN for attributes without a problem)."""
    out = {}
    for i, s in enumerate(sweep.seeds):
        m = torch.full((len(sweep.test),), float("nan"))
        for j, a in enumerate(problems.attributes):
            rows = sweep.scores.rows[a]
            m[rows] = margins_of(problems.index(i, j), torch.as_tensor(rows)).float()
        out[s] = m
    return out
