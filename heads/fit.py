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
Steps 1-2 run once for `alpha` and once for each of `alpha_alternatives`; the per-pair held-out values of
the restart criterion of each fold's search, pooled over the folds, choose the regulariser weight of step 3
(`scale_choice`, as for head scales: an alternative must lead `alpha` by `scale_choice_z` standard errors).
On one held-out slice the alternatives are starts of the one search instead (heads/train.py, `start_grid`,
`choose_start`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from .config import MixtureConfig
from .model import MixtureRewardModel
from .train import STOP_CRITERIA, FitRecord, _fit, heldout_rows, pair_nll, recorded_z, router_table, scale_choice, start_scales


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
    "fold" and "folds", and "alpha" while the folds compare regulariser weights). The returned model is on
    the CPU in eval mode; `model.fit_record` (a FitRecord) says how it stopped, `model.train_history` holds the logged training losses and `model.train_steps`
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


@dataclass
class FoldSearch:
    """Steps 1-2 of the cross-validated fit for one config: the start kept (and the z it was judged by), each
    start's pooled criterion at the choice, each fold's search record, and the per-pair values of the restart
    criterion (the last of `STOP_CRITERIA[stop_on]`) of each fold's search at its kept weights on the fold's
    held-out pairs, concatenated in fold order."""

    config: MixtureConfig
    keep: int
    z: float | None
    nll: list
    searches: list
    values: torch.Tensor


def search_by_folds(train: CacheSplit, config: MixtureConfig, splits: list, fold_log: Callable) -> FoldSearch:
    """Steps 1 (the start) and 2 (each fold's search of the kept start) of the cross-validated fit."""
    scales = start_scales(config)
    keep, z, nll = 0, None, []
    if len(scales) > 1:
        values = torch.cat([_fit(train, config, fold_log(f), split=split, until_choice=True) for f, split in enumerate(splits)], dim=1)
        nll = values.mean(1).tolist()
        keep, z = scale_choice(nll, scales, lambda r: values[r], config.scale_choice_z)
    table, index = router_table(train, config.router_input)
    criterion = STOP_CRITERIA[config.stop_on][-1]  # the restart criterion
    searches, held_nll = [], []
    for f, split in enumerate(splits):
        model = _fit(train, replace(config, refit=False), fold_log(f), split=split, only_start=keep)
        searches.append(model.fit_record)
        with torch.no_grad():
            held = split[1]
            held_nll.append(pair_nll(criterion, model.log_weights(table[index[held]]), model.head_margins(train.diff[held])).float())
    return FoldSearch(config, keep, z, nll, searches, torch.cat(held_nll))


def _fit_by_folds(train: CacheSplit, config: MixtureConfig, folds: list[torch.Tensor], log: Callable[[dict], None] | None) -> MixtureRewardModel:
    n = len(train.diff)
    splits = fold_splits(n, folds)
    # one search per regulariser weight, each with the starts of `alpha` alone (start_grid)
    alphas = [config.alpha] + [a for a in dict.fromkeys(config.alpha_alternatives) if a != config.alpha]
    candidates = [replace(config, alpha=a, alpha_alternatives=()) for a in alphas]

    def fold_log(f: int, alpha: float) -> Callable[[dict], None] | None:
        if log is None:
            return None
        return lambda entry: log({**entry, "fold": f + 1, "folds": len(splits), **({"alpha": alpha} if len(candidates) > 1 else {})})

    # 1-2 for each regulariser weight; the pooled per-pair held-out values choose among them
    found = [search_by_folds(train, c, splits, lambda f, a=c.alpha: fold_log(f, a)) for c in candidates]
    means = [float(f.values.mean()) for f in found]
    chosen, alpha_z = scale_choice(means, [c.alpha for c in candidates], lambda r: found[r].values, config.scale_choice_z)
    search = found[chosen]
    config, keep, searches, scales = search.config, search.keep, search.searches, start_scales(search.config)
    best = float(np.mean([s.best_step * n / s.train_pairs for s in searches]))
    # 3. the refit on every pair
    refit_steps = max(1, int(round(config.refit_length * best)))
    refit_config = replace(config, seed=config.seed + 7919 * keep, head_init=(scales[keep],))
    model = _fit(train, refit_config, None, steps=refit_steps)
    first = searches[0]
    model.fit_record = FitRecord(
        schedule="early-stopping", steps=sum(s.steps for f in found for s in f.searches), best_step=int(round(np.mean([s.best_step for s in searches]))),
        stop_reason=", ".join(sorted({s.stop_reason for s in searches})), train_pairs=n, heldout_pairs=n, plan=first.plan,
        restarts=len(scales), chosen_restart=keep, restart_nll=[round(v, 6) for v in search.nll],
        start_z=recorded_z(search.z), curve=first.curve,
        best_heldout_nll=round(float(np.average([s.best_heldout_nll for s in searches], weights=[len(h) for h in folds])), 6),
        refit_steps=refit_steps, kept_criterion=first.kept_criterion, criterion_best_steps=first.criterion_best_steps,
        head_init=scales[keep], folds=len(splits), fold_best_steps=[s.best_step for s in searches],
        fold_heldout_nll=[s.best_heldout_nll for s in searches],
        alpha=config.alpha, alpha_nll=[round(v, 6) for v in means], alpha_z=recorded_z(alpha_z))
    model.train_steps = model.fit_record.steps + refit_steps
    return model
