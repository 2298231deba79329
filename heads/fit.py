"""`fit_mixture`: stage 1 on a cache split, on one held-out slice (heads/train.py) or, on small caches, by
cross-validation over prompts.

On a cache of a few thousand pairs the held-out slice of early stopping holds a few hundred pairs or
fewer (~48 on a 600-pair cache): too few to tell a good start from a poor one, or to say how long to
train. There `micro` is fitted by `MixtureConfig.folds`-fold cross-validation instead (`uses_folds`):
1. each fold of prompts is held out in turn while the starts train side by side on the other folds, up
   to the point where one slice would choose; the per-pair values of the restart criterion, pooled over
   the folds (every training pair held out once), choose the start (`scale_choice`, with its bar for a
   later head scale);
2. the chosen start is trained alone on each fold's other folds until the fold's held-out values stop
   improving: its best steps, scaled to all pairs and averaged, are the refit's length;
3. the chosen start is trained on every pair for that many steps (warm-up + cosine decay), as the
   refit of a one-slice fit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from .config import MixtureConfig
from .model import MixtureRewardModel
from .train import FitRecord, _fit, heldout_rows, recorded_z, scale_choice, start_scales


def fit_mixture(
    train: CacheSplit,
    config: MixtureConfig | None = None,
    *,
    log: Callable[[dict], None] | None = None,
    reference: bool = False,
) -> MixtureRewardModel:
    """Fit stage 1 (or a baseline) on `train`; deterministic for `config.seed` on a given device.

    `reference=True` trains `micro` by autograd on `batch_loss` instead of the hand-written stacked step
    (one restart; the slow reference the tests and benchmarks/fit_mixture_speed.py compare against).

    `log`, if given, receives {"step", "epoch", "loss", "heldout_nll" (None with fixed epochs), "best_step",
    "lr", "seconds"} after each held-out evaluation (or each epoch with fixed epochs; with folds also
    "fold" and "folds"). The returned model is on the CPU in eval mode; `model.fit_record` (a FitRecord)
    says how it stopped, `model.train_history` holds the logged training losses and `model.train_steps`
    the steps run.
    """
    config = (config or MixtureConfig()).resolved(train)
    threads = torch.get_num_threads()
    if config.threads and config.device == "cpu":
        torch.set_num_threads(config.threads)
    # Subnormal floats (router weights of unused heads, exp(-90)) make every CPU product they enter
    # many times slower; flushing them to zero changes no result beyond float tolerance.
    flushed = config.device == "cpu" and torch.set_flush_denormal(True)
    try:
        folds = prompt_folds(train, config.folds, config.seed) if uses_folds(train, config, reference) else []
        return _fit_by_folds(train, config, folds, log) if len(folds) > 1 else _fit(train, config, log, reference)
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)


def uses_folds(train: CacheSplit, config: MixtureConfig, reference: bool = False) -> bool:
    """Whether `fit_mixture` cross-validates: an early-stopping `micro` fit with a refit from scratch (a warm
    refit continues one search's weights), `folds` > 1, and a held-out slice of fewer than `folds_below`
    pairs."""
    if config.method != "micro" or config.epochs is not None or reference or config.folds < 2 or not config.refit or config.refit_warm:
        return False
    n = len(train.diff)
    if n > config.refit_max_pairs or len(np.unique(train.prompt_index.numpy())) < 2:
        return False
    return len(heldout_rows(train, config.holdout, config.holdout_max_pairs, config.seed)[1]) < config.folds_below


def prompt_folds(train: CacheSplit, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """The held-out rows of each fold: the prompts in a seeded order, cut into `folds` runs of about equal
    pair counts (a prompt's pairs are never split; a fold that would be empty is dropped)."""
    prompt = train.prompt_index.numpy()
    prompts, counts = np.unique(prompt, return_counts=True)
    order = np.random.default_rng([seed, 0xF01D]).permutation(len(prompts))
    before = np.cumsum(counts[order]) - counts[order]  # pairs ahead of each prompt in that order
    fold_of = np.empty(len(prompts), dtype=np.int64)
    fold_of[order] = before * folds // len(prompt)
    fold_of = fold_of[np.searchsorted(prompts, prompt)]  # per pair
    return [torch.from_numpy(np.flatnonzero(fold_of == f)) for f in range(folds) if (fold_of == f).any()]


def fold_splits(n: int, folds: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fit rows, held-out rows) of each fold of `n` pairs, as `_fit(split=...)` takes them."""
    splits = []
    for held in folds:
        mask = torch.ones(n, dtype=torch.bool)
        mask[held] = False
        splits.append((mask.nonzero().flatten(), held))
    return splits


def _fit_by_folds(train: CacheSplit, config: MixtureConfig, folds: list[torch.Tensor], log: Callable[[dict], None] | None) -> MixtureRewardModel:
    n = len(train.diff)
    splits = fold_splits(n, folds)

    def fold_log(f: int) -> Callable[[dict], None] | None:
        return None if log is None else (lambda entry: log({**entry, "fold": f + 1, "folds": len(splits)}))

    # 1. the start: per-pair values at the choice point of every fold, pooled
    scales = start_scales(config)
    keep, z, nll = 0, None, []
    if len(scales) > 1:
        values = torch.cat([_fit(train, config, fold_log(f), split=split, until_choice=True) for f, split in enumerate(splits)], dim=1)
        nll = values.mean(1).tolist()
        keep, z = scale_choice(nll, scales, lambda r: values[r], config.scale_choice_z)
    # 2. the length: the chosen start alone on each fold until its held-out values stop improving
    searches = []
    for f, split in enumerate(splits):
        searches.append(_fit(train, replace(config, refit=False), fold_log(f), split=split, only_start=keep).fit_record)
    best = float(np.mean([s.best_step * n / s.train_pairs for s in searches]))
    # 3. the refit on every pair
    refit_steps = max(1, int(round(config.refit_length * best)))
    refit_config = replace(config, seed=config.seed + 7919 * keep, head_init=(scales[keep],))
    model = _fit(train, refit_config, None, steps=refit_steps)
    first = searches[0]
    model.fit_record = FitRecord(
        schedule="early-stopping", steps=sum(s.steps for s in searches), best_step=int(round(np.mean([s.best_step for s in searches]))),
        stop_reason=", ".join(sorted({s.stop_reason for s in searches})), train_pairs=n, heldout_pairs=n, plan=first.plan,
        restarts=len(scales), chosen_restart=keep, restart_nll=[round(v, 6) for v in nll],
        start_z=recorded_z(z), curve=first.curve,
        best_heldout_nll=round(float(np.average([s.best_heldout_nll for s in searches], weights=[len(h) for h in folds])), 6),
        refit_steps=refit_steps, kept_criterion=first.kept_criterion, criterion_best_steps=first.criterion_best_steps,
        head_init=scales[keep], folds=len(splits), fold_best_steps=[s.best_step for s in searches],
        fold_heldout_nll=[s.best_heldout_nll for s in searches])
    model.train_steps = model.fit_record.steps + refit_steps
    return model
