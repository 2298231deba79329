"""Rows of a cache split: whole prompts held out (one slice, or folds), and the split on the training
device, gathered by row in batches."""

from __future__ import annotations

import numpy as np
import torch

from .store import CacheSplit, router_table


def heldout_rows(train: CacheSplit, fraction: float, max_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, held-out rows) of `train`: whole prompts held out, in a seeded order, until `fraction` of the
    pairs or `max_pairs` is reached (at least one prompt; at least one prompt left to fit on)."""
    prompt = train.prompt_index.numpy()
    prompts, counts = np.unique(prompt, return_counts=True)
    if len(prompts) < 2:
        raise ValueError("the training split has a single prompt, so no prompt can be held out for early stopping; "
                         "set a fixed number of epochs (--epochs).")
    order = np.random.default_rng([seed, 0x4E1D]).permutation(len(prompts))
    target = min(fraction * len(prompt), max_pairs)
    take = int(np.searchsorted(np.cumsum(counts[order]), target, side="left")) + 1
    mask = np.isin(prompt, prompts[order[: min(max(1, take), len(prompts) - 1)]])
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


def prompt_folds(train: CacheSplit, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """The held-out rows of each fold: the prompts in a seeded order, cut into `folds` runs of about equal
    pair counts (a prompt's pairs are never split; a fold that would be empty is dropped)."""
    prompt = train.prompt_index.numpy()
    prompts, counts = np.unique(prompt, return_counts=True)
    order = np.random.default_rng([seed, 0xF01D]).permutation(len(prompts))
    before = np.cumsum(counts[order]) - counts[order]
    fold_of = np.empty(len(prompts), dtype=np.int64)
    fold_of[order] = before * folds // len(prompt)
    fold_of = fold_of[np.searchsorted(prompts, prompt)]
    return [torch.from_numpy(np.flatnonzero(fold_of == f)) for f in range(folds) if (fold_of == f).any()]


def split_users(split: CacheSplit) -> list[str]:
    """The names of the attributes (user ids) that label at least one pair of `split`, in attribute order."""
    ids = torch.unique(split.attribute[split.attribute >= 0]).tolist()
    return [split.attributes[i] for i in ids]


def user_rows(split: CacheSplit, users: list[str]) -> torch.Tensor:
    """[n] each pair's row in `users` (a model's user names), -1 where its attribute is not among them."""
    where = {name: i for i, name in enumerate(users)}
    lookup = torch.tensor([where.get(name, -1) for name in split.attributes] + [-1], dtype=torch.long)
    return lookup[split.attribute.long().clamp(-1, len(split.attributes) - 1)]  # -1 (no attribute) reads the last: -1


class DeviceSplit:
    """A cache split on the training device: differences, router inputs (`router_input`: 'prompt',
    'context' or None) and, with `users` (a model's user names), each pair's user row, gathered by row, and
    batches of row indices."""

    def __init__(self, train: CacheSplit, router_input: str | None, device: str = "cpu", users: list[str] | None = None):
        self.device = torch.device(device)
        self.diff = train.diff.to(self.device, torch.float32)
        self.table = self.index = self.user = None
        if router_input is not None:
            table, index = router_table(train, router_input)
            self.table, self.index = table.to(self.device, torch.float32), index.to(self.device)
        if users:
            self.user = user_rows(train, users).to(self.device)

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(differences, router inputs) of some rows."""
        x = None if self.table is None else self.table.index_select(0, self.index.index_select(0, rows))
        return self.diff.index_select(0, rows), x

    def users(self, rows: torch.Tensor) -> torch.Tensor | None:
        """[B] the user rows of some rows (-1: none); None without users."""
        return None if self.user is None else self.user.index_select(0, rows)

    def probe(self, rows: torch.Tensor) -> tuple:
        """(differences, distinct router rows, inverse, user rows or None) of some rows, for `outputs`."""
        rows = rows.to(self.device)
        users = None if self.user is None else self.user[rows]
        if self.table is None:
            return self.diff[rows], None, None, users
        distinct, inverse = torch.unique(self.index[rows], return_inverse=True)
        return self.diff[rows], self.table[distinct], inverse, users

    def batches(self, rows: torch.Tensor, batch_size: int, gen: torch.Generator):
        """Endless batches of `rows`, reshuffled every pass."""
        while True:
            order = rows[torch.randperm(len(rows), generator=gen)].to(self.device)
            yield from order.split(batch_size)
