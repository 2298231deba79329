"""`fit_mixture`: stage 1 on a cache split, as an estimator plus a selector.

1. The candidates (heads/search.py) train side by side until the held-out values stop improving, on one
   held-out slice of prompts or, on small caches, on every fold of a cross-validation over prompts at once
   (heads/train.py, `Search`); successive halving drops the losing half at each rung.
2. One rule selects among those still training (`select`).
3. The refit trains the selected candidate again, from its initialisation, on every training pair, for as
   many steps as the held-out values asked for (scaled to all pairs), with warm-up + cosine decay.
`--epochs N` trains the first candidate for N passes instead; baselines have one candidate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..embedcache.store import CacheSplit
from .config import ROUTER_HIDDEN, MixtureConfig, routes_by_user
from .criteria import CRITERIA, recorded_z
from .model import MixtureRewardModel
from .search import candidates, held_out_sets, is_default, select
from ..embedcache.rows import DeviceSplit, split_users
from .train import Search, build_model, make_trainer, train_fixed

#: train again on every pair after the search for caches of at most this many training pairs
REFIT_MAX_PAIRS = 100_000
#: one held-out slice: the refit is as long as the last evaluation within REFIT_SE standard errors of the best
REFIT_SE = 1.0
#: the ensemble's calibrated prior: an L2 pull of each head towards its prior, in units of rms(diff)^2
ENSEMBLE_L2 = 0.05


@dataclass
class FitRecord:
    """What a fit did: written to metrics.json under "fit" and kept on the model as `fit_record`."""

    schedule: str  # "early-stopping" | "fixed-epochs"
    steps: int = 0  # optimiser steps of the search (or of the fixed schedule)
    best_step: int = 0  # the kept step of the selected candidate (cross-validated: the folds' mean)
    stop_reason: str = ""  # "patience" | "max_steps" | "epochs"
    train_pairs: int = 0
    heldout_pairs: int = 0
    folds: int = 0  # 0: one held-out slice
    fold_best_steps: list = field(default_factory=list)  # cross-validated: each fold's best step of the selected candidate
    plan: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)  # [{"alpha", "head_init", "seed"}]
    chosen: int = 0  # the selected candidate
    chosen_z: float | None = None  # its lead over the best default candidate (None: a default candidate won)
    candidate_nll: dict = field(default_factory=dict)  # each candidate's pooled held-out value when last compared
    rungs: list = field(default_factory=list)  # [{"step", "kept": [candidates]}]
    curve: list = field(default_factory=list)  # per evaluation: fold 0's held-out values of each live candidate
    best_heldout_nll: float | None = None  # the selected candidate's kept criterion at its best step
    kept_criterion: str = ""
    criterion_best_steps: dict = field(default_factory=dict)
    refit_steps: int = 0
    head_init: float | None = None
    alpha: float | None = None
    candidate_steps: int = 0  # steps summed over the models trained (search and refit)
    steps_vs_one_start: float = 1.0  # candidate_steps / the selected candidate's own (in every fold, and its refit)
    seconds: float = 0.0  # wall time of the fit
    matmul_seconds: float = 0.0  # candidate_steps x one model's matrix products per step, timed in the same run
    time_vs_matmul: float = 0.0  # seconds / matmul_seconds

    def to_dict(self) -> dict:
        return {k: ({str(i): v for i, v in value.items()} if k == "candidate_nll" else value) for k, value in self.__dict__.items()}


def fit_mixture(train: CacheSplit, config: MixtureConfig | None = None, *, log: Callable[[dict], None] | None = None) -> MixtureRewardModel:
    """Fit stage 1 (or a baseline) on `train`; deterministic for `config.seed` on a given device and thread count.

    `log`, if given, receives {"step", "epoch", "loss", "heldout_nll" (None with
    fixed epochs), "best_nll", "best_step", "lr", "restarts", "seconds"} at each held-out evaluation (each
    pass with fixed epochs). The model returned is on the CPU in eval mode; `model.fit_record` says what
    the fit did, `model.train_history` holds the refit's (or the fixed schedule's) mean loss per pass."""
    config = config or MixtureConfig()
    by_user = routes_by_user(config, train)  # decided on router_input 'auto', before it resolves
    config = config.resolved(train)
    if len(train.diff) == 0:
        raise ValueError("the training split has no pairs")
    if config.num_heads > len(train.diff):
        raise ValueError(f"--k {config.num_heads} is more than the {len(train.diff)} training pairs: every head needs pairs to "
                         f"learn from; choose --k {len(train.diff)} or fewer, or give more training pairs.")
    threads = torch.get_num_threads()
    if config.threads and config.device == "cpu":
        torch.set_num_threads(config.threads)
    # Subnormal floats (router weights of unused heads) make CPU products many times slower; flushing them
    # to zero changes no result beyond float tolerance.
    flushed = config.device == "cpu" and torch.set_flush_denormal(True)
    try:
        start = time.perf_counter()
        model = _fit(train, config, log, by_user)
        record = model.fit_record
        record.seconds = round(time.perf_counter() - start, 3)
        hidden = ROUTER_HIDDEN if config.method == "micro" else 0
        record.matmul_seconds = round(record.candidate_steps * step_products(train.diff.shape[1], model.k, hidden, config), 3)
        record.time_vs_matmul = round(record.seconds / max(record.matmul_seconds, 1e-9), 2)
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)
    model.train_steps = record.candidate_steps
    return model


def step_products(d: int, k: int, hidden: int, config: MixtureConfig, repeats: int = 20) -> float:
    """Seconds of one model's matrix products in one step (forward and weight gradient of the heads and of
    the router's first layer) at this batch size, on this device and thread count: the best of 3 timings."""
    device, b = torch.device(config.device), config.batch_size
    x, heads, gk = torch.randn(b, d, device=device), torch.randn(d, k, device=device), torch.randn(b, k, device=device)
    first, gh = torch.randn(d, max(hidden, 1), device=device), torch.randn(b, max(hidden, 1), device=device)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            x @ heads, x.T @ gk
            if hidden:
                x @ first, x.T @ gh
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def ensemble_prior(train: CacheSplit, config: MixtureConfig) -> tuple[float, float]:
    """(prior unit, L2 weight) of the ensemble's frozen priors: 'calibrated' gives prior margins the spread of a
    single BT head's fitted margins and pulls each head towards its prior; 'paper' gives them unit spread, no pull."""
    diff = train.diff[:4096].float()
    rms = float(diff.pow(2).mean().sqrt())
    if config.method != "ensemble":
        return rms, 0.0
    if config.ensemble_prior == "paper":
        return rms, 0.0
    head = fit_mixture(train, MixtureConfig(**{**config.to_dict(), "method": "single"})).head_vectors()[0].detach()
    return rms / max(float((diff @ head).std()), 1e-6), ENSEMBLE_L2 * rms**2


def _fit(train: CacheSplit, config: MixtureConfig, log: Callable | None, by_user: bool = False) -> MixtureRewardModel:
    n, d = train.diff.shape
    users = split_users(train) if by_user else []
    data = DeviceSplit(train, config.router_input if config.method == "micro" else None, config.device, users)
    prior_unit, l2 = ensemble_prior(train, config)
    searching = config.method == "micro"
    cands = candidates(config, searching and config.epochs is None)
    if config.epochs is not None:
        steps = config.epochs * math.ceil(n / config.batch_size)
        model, history = train_fixed(data, config, build_model(config, d, cands[0], prior_unit, users), steps, cands[0].alpha, l2, log)
        model.fit_record = FitRecord("fixed-epochs", steps=steps, best_step=steps, stop_reason="epochs", train_pairs=n,
                                     candidate_steps=steps, candidates=[c.__dict__ for c in cands], head_init=cands[0].head_init)
        model.train_history = history
        return model

    def trainer_for(members: list[int]):
        models = [build_model(config, d, cands[i], prior_unit, users) for i in members]
        return make_trainer(config, data, models, [cands[i].alpha for i in members], l2)

    held = held_out_sets(train, config.seed, cross_validate=searching and n <= REFIT_MAX_PAIRS)
    search = Search(data, config, cands, [is_default(c, config) for c in cands], held, trainer_for, keep_weights=n > REFIT_MAX_PAIRS)
    steps, stop = search.run(log)
    record = _record(search, steps, stop, n, sum(len(h) for h in held))
    chosen = record.chosen
    if n > REFIT_MAX_PAIRS:  # the search's kept weights are the model
        model = search.trainer.to_model(search.weights[search.kept_criterion(0, chosen)][(0, chosen)]).cpu().eval()
        model.train_history = []
    else:
        if search.folds == 1:
            record.refit_steps = max(1, int(round(search.last_within(chosen, REFIT_SE) * n / search.n_fit)))
        else:  # the folds' best steps, each scaled to all pairs, averaged
            sizes = np.diff(search.bounds)
            record.refit_steps = max(1, int(round(np.mean([s * n / (n - m) for s, m in zip(record.fold_best_steps, sizes)]))))
        model, model.train_history = train_fixed(data, config, build_model(config, d, cands[chosen], prior_unit, users), record.refit_steps,
                                                 cands[chosen].alpha, l2)
    record.candidate_steps = search.candidate_steps + record.refit_steps
    record.steps_vs_one_start = round(record.candidate_steps / (search.folds * steps + record.refit_steps), 2)
    model.fit_record = record
    return model


def _record(search: Search, steps: int, stop: str, n: int, heldout: int) -> FitRecord:
    """The fit record of a finished search, with the final selection among the candidates still live."""
    chosen, z = search.live[0], search.z
    if len(search.live) > 1:
        values = [search.pooled(i) for i in search.live]
        search.compared.update({i: float(v.mean()) for i, v in zip(search.live, values)})
        pos, z = select(values, [search.home[i] for i in search.live])
        chosen = search.live[pos]
    kept = [search.kept_criterion(f, chosen) for f in range(search.folds)]
    steps_ = [search.best_step[c][(f, chosen)] for f, c in enumerate(kept)]
    cand = search.cands[chosen]
    return FitRecord(
        "early-stopping", steps=steps, best_step=int(round(np.mean(steps_))), stop_reason=stop, train_pairs=n, heldout_pairs=heldout,
        folds=search.folds if search.folds > 1 else 0, fold_best_steps=steps_ if search.folds > 1 else [], plan=search.plan.__dict__.copy(),
        candidates=[x.__dict__ for x in search.cands], chosen=chosen, chosen_z=recorded_z(z),
        candidate_nll={i: round(v, 6) for i, v in search.compared.items()}, rungs=search.rungs, curve=search.curve,
        best_heldout_nll=round(float(np.mean([search.best[c][(f, chosen)] for f, c in enumerate(kept)])), 6), kept_criterion=CRITERIA[kept[0]],
        criterion_best_steps={name: search.best_step[j][(0, chosen)] for j, name in enumerate(CRITERIA)},
        head_init=cand.head_init, alpha=cand.alpha)
