"""What stage 1 searches, and the one rule that selects: candidates, held-out prompts, folds, halving.

A `Candidate` is one initialisation of a `micro` fit: a router-regulariser weight, a head scale and a
seed. The default candidates are `restarts` seeds of (alpha, head scale) for each of `head_init`, and
one seed per head scale of each of `alpha_alternatives`. They train side by side (heads/train.py) on the
pairs outside a held-out slice of prompts, or, on small caches, in every fold of a cross-validation over
prompts at once; every held-out value below is the calibrated NLL, per held-out pair, pooled over folds.

The rule (`select`): the lowest value wins among the best of the default's own candidates (alpha, first
head scale) and the others that lead that one by `SELECT_Z` standard errors of the per-pair difference. Successive halving (`halve`) keeps the better half of each family (same alpha and head scale)
at each rung, and at the last rung applies the rule to the families' best, so that a second candidate
trains on only while it leads; the rule is applied again at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..embedcache.rows import heldout_rows, prompt_folds
from ..embedcache.store import CacheSplit
from .config import MixtureConfig
from .criteria import paired_z

#: the bar of the selection rule, in standard errors of the per-pair difference
SELECT_Z = 1.0
#: successive-halving rungs, in steps of 32 pairs: each family's better half goes on at each but the last, where the rule selects
RUNGS = (125, 250, 500)
#: early stopping's held-out slice: this fraction of the training pairs (whole prompts), at most HOLDOUT_MAX pairs
HOLDOUT, HOLDOUT_MAX = 0.1, 8192
#: cross-validate over FOLDS folds of prompts when the held-out slice would hold fewer than FOLDS_BELOW pairs
FOLDS, FOLDS_BELOW = 3, 150


@dataclass(frozen=True)
class Candidate:
    """One initialisation of a `micro` fit: its regulariser weight, initial head scale and seed."""

    alpha: float
    head_init: float
    seed: int


def candidates(config: MixtureConfig, search: bool = True) -> list[Candidate]:
    """The candidates of a fit; the first is the default's own. Every (alpha, head scale) start has its own
    seed, drawn from one generator seeded by config.seed; an alternative alpha starts as alpha's first start
    of the same head scale. Without `search` (baselines, fixed epochs): the first alone."""
    restarts = max(1, config.restarts)
    seeds = [int(s) for s in np.random.default_rng(config.seed).integers(0, 2**31 - 1, size=restarts * len(config.head_init))]
    if not search:
        return [Candidate(config.alpha, config.head_init[0], seeds[0])]
    found = [Candidate(config.alpha, scale, seeds[i * restarts + j]) for i, scale in enumerate(config.head_init) for j in range(restarts)]
    found += [Candidate(a, scale, seeds[i * restarts]) for a in dict.fromkeys(config.alpha_alternatives) if a != config.alpha
              for i, scale in enumerate(config.head_init)]
    return found


def is_default(candidate: Candidate, config: MixtureConfig) -> bool:
    return candidate.alpha == config.alpha and candidate.head_init == config.head_init[0]


def select(values: list[torch.Tensor], home: list[bool]) -> tuple[int, float | None]:
    """(index, z): the lowest mean of `values` (per-pair held-out values, one tensor per candidate) among the
    best home candidate and the others that lead it by SELECT_Z standard errors of the per-pair difference;
    z is the chosen one's lead (None for a home candidate)."""
    means = [float(v.mean()) for v in values]
    if all(home) or not any(home):
        return int(np.argmin(means)), None
    base = min((i for i in range(len(values)) if home[i]), key=lambda i: means[i])
    lead = {i: paired_z(values[i], values[base]) for i in range(len(values)) if not home[i] and means[i] < means[base]}
    best = min([base] + [i for i, z in lead.items() if z >= SELECT_Z], key=lambda i: means[i])
    return best, lead.get(best)


def halve(values: list[torch.Tensor], family: list, home: list[bool], last: bool) -> tuple[list[int], float | None]:
    """(positions that go on, z). Before the `last` rung: the better half of each family (the candidates that
    share a regulariser weight and a head scale). At the last rung: each family's best competes by `select`;
    the winner goes on, and beside it the best home candidate while someone else leads it by the bar."""
    means = [float(v.mean()) for v in values]
    groups: dict = {}
    for i in sorted(range(len(values)), key=lambda i: means[i]):
        groups.setdefault(family[i], []).append(i)
    if not last:
        return sorted(i for members in groups.values() for i in members[: math.ceil(len(members) / 2)]), None
    best = [members[0] for members in groups.values()]
    chosen, z = select([values[i] for i in best], [home[i] for i in best])
    base = next((i for i in best if home[i]), best[chosen])
    return sorted({best[chosen], base}), z


def held_out_sets(train: CacheSplit, seed: int, cross_validate: bool) -> list[torch.Tensor]:
    """The held-out rows of each fold: FOLDS folds of prompts where `cross_validate` allows it and one slice
    would hold fewer than FOLDS_BELOW pairs, else the one slice of `heldout_rows`."""
    held = heldout_rows(train, HOLDOUT, HOLDOUT_MAX, seed)[1]
    if cross_validate and len(held) < FOLDS_BELOW:
        folds = prompt_folds(train, FOLDS, seed)
        if len(folds) > 1:
            return folds
    return [held]
