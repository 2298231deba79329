"""`fit_mixture`: train K linear BT heads (+ router) on a cache split, read top to bottom.

All tensors go to the device once; each step gathers a batch of difference vectors and router inputs
by index (router inputs stay deduplicated, so a 700K-pair cache does not hold a second [n, d] copy).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import torch

from ..embedcache.store import CacheSplit, require_contexts
from .config import MixtureConfig
from .losses import mixture_nll, per_head_bt, weight_regulariser
from .model import MixtureRewardModel


def router_table(split: CacheSplit, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(table [rows, d], index [n]) such that table[index[i]] is pair i's router input."""
    if source == "prompt":
        return split.prompt_embedding, split.prompt_index
    if source == "context":
        require_contexts(split, "a router reading the context")
        return split.context_embedding, split.context_index
    raise ValueError(f"router input must be 'prompt' or 'context', not {source!r}")


def build_model(config: MixtureConfig, hidden_size: int, diff_rms: float = 1.0) -> MixtureRewardModel:
    """The untrained model for a config, initialised from config.seed alone (global RNG untouched).
    For the ensemble, `diff_rms` sets the prior's unit: prior margins have std config.prior_scale * rms(diff) / diff_rms."""
    weights = {"micro": "router", "static": "static", "single": "uniform", "ensemble": "uniform"}[config.method]
    # The prior's margins p . d have std ~ prior_scale whatever the embedding scale of the cache.
    prior_scale = config.prior_scale / max(diff_rms, 1e-12) if config.method == "ensemble" else 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return MixtureRewardModel(
            hidden_size,
            config.num_heads,
            weights=weights,
            router=config.router,
            router_hidden=config.hidden,
            prior_scale=prior_scale,
            seed=config.seed,
        )


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay to zero."""
    warm = max(1, int(round(warmup * total)))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit_mixture(
    train: CacheSplit,
    config: MixtureConfig | None = None,
    *,
    log: Callable[[dict], None] | None = None,
) -> MixtureRewardModel:
    """Fit stage 1 (or a baseline) on `train`; deterministic for `config.seed` on a given device.

    `log`, if given, receives {"epoch", "loss", "seconds"} after each epoch. The returned model is on
    the CPU in eval mode; `model.train_history` holds the per-epoch mean losses.
    """
    config = (config or MixtureConfig()).resolved(train)
    threads = torch.get_num_threads()
    if config.threads and config.device == "cpu":
        torch.set_num_threads(config.threads)
    try:
        return _fit(train, config, log)
    finally:
        torch.set_num_threads(threads)


def _fit(train: CacheSplit, config: MixtureConfig, log: Callable[[dict], None] | None) -> MixtureRewardModel:
    device = torch.device(config.device)
    n, d = train.diff.shape
    if n == 0:
        raise ValueError("the training split has no pairs")

    diff = train.diff.to(device, torch.float32)
    diff_rms = float(train.diff[: min(n, 4096)].pow(2).mean().sqrt())
    prior_unit = diff_rms
    if config.method == "ensemble" and config.prior_calibration == "single-head":
        # The priors' margins should be of the size of a fitted head's margins, whatever the data: on a
        # weak-signal cache fitted margins are ~0.05 and priors of margin ~1 would drown every head.
        reference = _fit(train, replace(config, method="single"), None).head_vectors()[0].detach().to(device)
        margin_std = float((diff[: min(n, 4096)] @ reference).std())
        prior_unit = diff_rms / max(margin_std, 1e-6)
    model = build_model(config, d, prior_unit).to(device)
    model.train()
    uses_router = config.method == "micro"
    if uses_router:
        table, index = router_table(train, config.router_input)
        table, index = table.to(device, torch.float32), index.to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused kernel saves ~15 % per step at batch 32, where per-step overhead dominates
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    schedule = [config.lr * lr_factor(s, total, config.warmup) for s in range(total)]
    gen = torch.Generator().manual_seed(config.seed)

    history, step, start = [], 0, time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        running = torch.zeros((), device=device)
        for lo in range(0, n, config.batch_size):
            batch = order[lo : lo + config.batch_size]
            margins = diff[batch] @ model.head_vectors().T
            if config.method in ("micro", "static"):
                log_w = model.log_weights(table[index[batch]] if uses_router else margins)
                loss = mixture_nll(log_w, margins)
                if config.alpha:
                    loss = loss + config.alpha * weight_regulariser(log_w, config.balance)
            else:
                loss = per_head_bt(margins)
                if config.method == "ensemble" and config.prior_l2:
                    loss = loss + 0.5 * config.prior_l2 * diff_rms**2 * model.heads.pow(2).sum()
            for group in opt.param_groups:
                group["lr"] = schedule[step]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach() * len(batch)
            step += 1
        history.append(float(running) / n)
        if not math.isfinite(history[-1]):
            raise ValueError(
                f"the {config.method} fit diverged: its loss became {history[-1]} in epoch {epoch + 1} (lr {config.lr}); "
                "lower --lr, or check the cache for extreme embedding values."
            )
        if log is not None:
            log({"epoch": epoch + 1, "loss": history[-1], "seconds": time.perf_counter() - start})

    model = model.cpu().eval()
    model.train_history = history
    model.train_steps = total
    return model
