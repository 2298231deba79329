"""Scoring of stage 2: accuracy records per (method, budget, seed, attribute), and their summary.

Every method is scored on ALL of an attribute's test pairs, except the methods that use labelled test
shots (HyRe, MiCRo-HyRe: `uses_test_shots` in micro.methods), which are scored on the test pairs minus
their shots (as in the paper: HyRe's Clarity 0.7027 = 26/37 with 37 = 53 - 16, Single's 0.4717 = 25/53).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from ..methods import order
from .draws import attribute_rows


@dataclass
class Scores:
    """Accuracy records on the test split; `shots[method][seed][attribute]`: the labelled test shots a
    method used (it is scored on the other test pairs)."""

    test: CacheSplit
    shots: dict[str, dict[int, dict[int, np.ndarray]]] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = attribute_rows(self.test)

    def eval_rows(self, method: str, seed: int, a: int) -> np.ndarray:
        """Test rows of attribute `a` that `method` is scored on for `seed`."""
        if method in self.shots:
            return np.setdiff1d(self.rows[a], self.shots[method][seed][a])
        return self.rows[a]

    def add(self, method: str, budget: int, seed: int, value) -> None:
        """Record margins over all test pairs ([n_test]; > 0 is right; an attribute whose margins are all
        NaN is not scored) or {attribute id: accuracy}."""
        if isinstance(value, dict):
            for a, accuracy in value.items():
                self.add_value(method, budget, seed, a, accuracy)
            return
        margins = torch.as_tensor(value)
        for a in self.rows:
            rows = self.eval_rows(method, seed, a)
            if len(rows) and not bool(torch.isnan(margins[rows]).all()):
                self.add_value(method, budget, seed, a, float((margins[rows] > 0).double().mean()))

    def add_value(self, method: str, budget: int, seed: int, a: int, accuracy: float) -> None:
        self.records.append(
            {"budget": budget, "seed": seed, "attribute": self.test.attributes[a], "method": method,
             "accuracy": float(accuracy), "pairs": int(len(self.eval_rows(method, seed, a)))}
        )


def summarise(records: list[dict], attributes: list[str]) -> dict:
    """{budget: {method: {attribute | "Average": {"mean", "std", "seeds"}}}}; Average is each seed's
    unweighted mean over attributes (as the paper's tables), then mean ± sample std over seeds."""
    out: dict = {}
    by: dict = {}
    for r in records:
        by.setdefault((r["budget"], r["method"]), {}).setdefault(r["seed"], {})[r["attribute"]] = r["accuracy"]
    for (budget, method), seeds in sorted(by.items(), key=lambda kv: (kv[0][0], order(kv[0][1]))):
        entry = {}
        for attr in attributes:
            vals = [s[attr] for s in seeds.values() if attr in s]
            if vals:
                entry[attr] = mean_std(vals)
        complete = [np.mean([s[a] for a in attributes]) for s in seeds.values() if all(a in s for a in attributes)]
        if complete:
            entry["Average"] = mean_std(complete)
        out.setdefault(str(budget), {})[method] = entry
    return out


def mean_std(vals: list[float]) -> dict:
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "seeds": len(arr)}
