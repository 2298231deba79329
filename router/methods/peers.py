"""The field's other personalization methods on the same budget and test pairs (micro.router.peers):
`drm` (Luo et al. 2025), `lore` (Bose et al. 2025; the basis never saw the scored user's labels) and
`lore-seen` (the basis learned on every training group, the scored ones included: marked in the tables)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..peers import drm_heads, drm_margins, drm_weights, fit_lore, fit_lore_unseen, fit_lore_users
from ..plugin import Budget, Plugin, Sweep
from .common import per_attribute, problems


@dataclass
class DrmOptions:
    components: int = 8
    """Principal directions of the training differences kept as heads, each with both signs (DRM's code)."""

    temperature: float = 1.0
    """A user's head weights are softmax(-summed BT loss / this) on the budget pairs (DRM: 1)."""

    def __post_init__(self) -> None:
        if int(self.components) < 1 or not float(self.temperature) > 0:
            raise ValueError(f"drm: components must be >= 1 and temperature > 0, not {self.components!r}, {self.temperature!r}")


class Drm(Plugin):
    Options = DrmOptions

    def prepare(self, sweep: Sweep) -> None:
        self.heads = drm_heads(sweep.train.diff, self.options.components)

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        p = problems(sweep, budget)
        if p is None:
            return {}
        w, scale = drm_weights(p.diff @ self.heads.T, self.options.temperature)
        return per_attribute(sweep, p, lambda u, rows: drm_margins(sweep.test.diff[rows], self.heads, w[u], scale[u]))


@dataclass
class LoreOptions:
    rank: int = 4
    """Rank r of the shared basis V [d, r]."""

    steps: int = 300
    """Full-batch Adam steps of the basis fit, and again of each user's weights."""

    lr: float = 0.05
    """Adam learning rate of both fits (differences scaled to unit rms norm)."""

    def __post_init__(self) -> None:
        if int(self.rank) < 1 or int(self.steps) < 1 or not float(self.lr) > 0:
            raise ValueError(f"lore: rank and steps must be >= 1 and lr > 0, not {self.rank!r}, {self.steps!r}, {self.lr!r}")


class Lore(Plugin):
    """Each user is scored with a basis learned on the other half of the training groups (LoRe's unseen users)."""

    Options = LoreOptions
    key = "lore"
    seen = False

    def prepare(self, sweep: Sweep) -> None:
        o, train = self.options, sweep.train
        if self.seen or sweep.eval_train is not train:  # another dataset's users are unseen by any basis of this one
            self.bases, self.basis_of = [fit_lore(train.diff, train.attribute, o.rank, steps=o.steps, lr=o.lr, seed=sweep.config.seed)], None
        else:
            self.bases, self.basis_of = fit_lore_unseen(train.diff, train.attribute, o.rank, steps=o.steps, lr=o.lr, seed=sweep.config.seed)

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        p = problems(sweep, budget)
        if p is None:
            return {}
        users = torch.tensor([p.attributes[u % len(p.attributes)] for u in range(len(p.diff))])
        which = torch.zeros(len(users), dtype=torch.long) if self.basis_of is None else self.basis_of[users]
        logits = [None] * len(p.diff)
        for b, basis in enumerate(self.bases):
            mine = torch.nonzero(which == b).flatten()
            if len(mine):
                fitted = fit_lore_users(basis, p.diff[mine], steps=self.options.steps, lr=self.options.lr)
                for u, w in zip(mine.tolist(), fitted):
                    logits[u] = w
        return per_attribute(sweep, p, lambda u, rows: self.bases[int(which[u])].margins(sweep.test.diff[rows], logits[u]))


class LoreSeen(Lore):
    seen = True
