"""Seeded draws of stage 2: each attribute's budget pairs (from the train split only) and its HyRe shots
(from the test split). Draws depend on (seed, attribute) alone, so they are reproducible, differ per
seed, and budgets of one seed are nested (the first b pairs of a seed's permutation)."""

from __future__ import annotations

import numpy as np

from ..embedcache.store import CacheSplit


class BudgetError(ValueError):
    """A budget larger than the training pairs an attribute has."""


def attribute_rows(split: CacheSplit) -> dict[int, np.ndarray]:
    """{attribute id: row indices} for the attributes present in the split."""
    attr = split.attribute.numpy()
    return {a: np.flatnonzero(attr == a) for a in range(len(split.attributes)) if (attr == a).any()}


def check_budgets(split: CacheSplit, budgets: list[int], what: str) -> None:
    """Refuse a budget larger than some attribute's training pairs (BudgetError naming both)."""
    for a, idx in attribute_rows(split).items():
        if max(budgets) > len(idx):
            raise BudgetError(
                f"budget {max(budgets)} is larger than the {len(idx)} training pairs of attribute "
                f"{split.attributes[a]!r} in {what}; use a budget of at most {len(idx)}."
            )


def draw_budget_pairs(split: CacheSplit, seed: int, budget: int) -> dict[int, np.ndarray]:
    """Seeded draw of `budget` pairs per attribute of `split` (the train split); the first b of a seed's
    permutation, so budgets are nested within a seed."""
    if split.split != "train":
        raise ValueError(f"budget pairs are drawn from the train split, not {split.split!r}")
    out = {}
    for a, idx in attribute_rows(split).items():
        gen = np.random.default_rng([seed, a, 0xB0D6E7])
        out[a] = idx[gen.permutation(len(idx))[:budget]]
    return out


def draw_shots(split: CacheSplit, seed: int, shots: int) -> dict[int, np.ndarray]:
    """Seeded HyRe shots per attribute of the test split (at most half of an attribute's test pairs)."""
    out = {}
    for a, idx in attribute_rows(split).items():
        gen = np.random.default_rng([seed, a, 0x5407])
        take = min(shots, len(idx) // 2)
        out[a] = idx[gen.permutation(len(idx))[:take]]
    return out
