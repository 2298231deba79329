"""The fit behind `fit_mixture` (heads/fit.py) on one held-out slice: train K linear BT heads (+ router) on a
cache split, read top to bottom.

All tensors go to the device once; each step gathers a batch of difference vectors and router inputs
by index (router inputs stay deduplicated, and the held-out slice is a set of row indices, so a 700K-pair
cache does not hold a second [n, d] copy).

Two schedules (MixtureConfig.epochs):
- None (default): train until the held-out values stop improving. A slice of the training prompts (by
  prompt, never splitting a prompt's pairs; never the test split) is held out; its mixture NLL and its
  temperature-calibrated NLL (MixtureConfig.stop_on) are evaluated every `eval_every` steps, each
  value's best weights are kept, the learning rate drops when neither improves and the fit stops after
  the last such plateau, between a minimum and a maximum number of steps that scale with the cache
  (`step_plan`); the weights of the later best are returned. For `micro`, `restarts` initialisations
  per head scale (MixtureConfig.head_init) train side by side for `restart_steps` and the one with the
  lowest held-out (calibrated) NLL goes on; a start of a later scale only when it leads the first
  scale's best by `scale_choice_z` standard errors of the per-pair difference (`choose_start`).
- an int: exactly that many passes with warm-up + cosine decay, no held-out slice (the earlier fixed
  schedule).

`micro` steps use a hand-written backward over stacked restarts (`MicroStack`): every product is one
matrix multiply over all restarts, and the gradients are checked against autograd on `losses.py` in the
tests; the baselines use autograd on the same losses.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from ..embedcache.store import CacheSplit, require_contexts
from .config import BASE_BATCH, MixtureConfig
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
    return MixtureRewardModel(
        hidden_size,
        config.num_heads,
        weights=weights,
        router=config.router,
        router_hidden=config.hidden,
        prior_scale=prior_scale,
        seed=config.seed,
        head_init=config.head_init[0],
    )


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay to zero."""
    warm = max(1, int(round(warmup * total)))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------------
# held-out slice and step plan
# ------------------------------------------------------------------------------------------------
def heldout_rows(train: CacheSplit, fraction: float, max_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, held-out rows) of `train`: whole prompts held out, in a seeded order, until `fraction`
    of the pairs or `max_pairs` is reached (at least one prompt; at least one prompt left to fit on)."""
    prompt = train.prompt_index.numpy()
    prompts, counts = np.unique(prompt, return_counts=True)
    if len(prompts) < 2:
        raise ValueError(
            "the training split has a single prompt, so no prompt can be held out for early stopping; "
            "set a fixed number of epochs (--epochs)."
        )
    order = np.random.default_rng([seed, 0x4E1D]).permutation(len(prompts))
    target = min(fraction * len(prompt), max_pairs)
    take = int(np.searchsorted(np.cumsum(counts[order]), target, side="left")) + 1
    held = prompts[order[: min(max(1, take), len(prompts) - 1)]]
    mask = np.isin(prompt, held)
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


@dataclass(frozen=True)
class StepPlan:
    """Steps of an early-stopped fit: at least `min_steps`, at most `max_steps`, an evaluation every
    `eval_every`, linear warm-up over `warmup_steps`, restarts side by side for `restart_steps`."""

    min_steps: int
    max_steps: int
    eval_every: int
    warmup_steps: int
    restart_steps: int


def step_plan(n_fit: int, config: MixtureConfig) -> StepPlan:
    """The plan for `n_fit` training pairs (see MixtureConfig.min_steps / max_steps / eval_every /
    restart_steps): made in steps of BASE_BATCH pairs, then shrunk in proportion for a larger batch (the
    same pairs seen, in fewer steps)."""
    per_epoch = math.ceil(n_fit / BASE_BATCH)
    lo = max(config.min_steps, int(round(config.min_epochs * per_epoch)))
    hi = max(lo, config.max_steps, int(round(config.max_epochs * per_epoch)))
    every = config.eval_every or int(min(500, max(50, per_epoch // 4)))
    factor = config.batch_size / BASE_BATCH
    lo, hi, restart = (max(1, math.ceil(v / factor)) for v in (lo, hi, config.restart_steps))
    every = max(1, int(round(every / factor)))
    return StepPlan(min_steps=lo, max_steps=hi, eval_every=every, warmup_steps=max(1, int(round(config.warmup * lo))), restart_steps=restart)


# ------------------------------------------------------------------------------------------------
# the early-stopping criterion
# ------------------------------------------------------------------------------------------------
# Margin scales 1/T tried by `calibrated_nll`: 2^(j/4) for j in -40..40 (1/1024 to 1024, 19 % apart).
CALIBRATION_SCALES = 2.0 ** (torch.arange(-40, 41, dtype=torch.float64) / 4)


def _grid_nll(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[S, ...] mixture NLL at each scale of `CALIBRATION_SCALES`.

    One scale at a time, in float64, as -mean log sum_k w_k sigmoid(s m_k): a few passes over one
    [..., n, K] buffer that stays in cache, ~8x faster than broadcasting the log-space form over all 81
    scales at once (benchmarks/README.md, "Stopping at the later plateau, the default"). A scale at which
    some pair's probability underflows to 0 is recomputed in log space, so the values match that form to
    float tolerance."""
    w, m = log_weights.double().exp(), margins.double()
    buf, rows = torch.empty_like(m), []
    for s in CALIBRATION_SCALES.tolist():
        torch.mul(m, s, out=buf)
        torch.sigmoid(buf, out=buf)
        nll = -buf.mul_(w).sum(-1).log_().mean(-1)
        if not bool(torch.isfinite(nll).all()):
            nll = -torch.logsumexp(log_weights.double() + F.logsigmoid(s * m), dim=-1).mean(-1)
        rows.append(nll)
    return torch.stack(rows).to(margins.dtype)


def _pair_values(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[..., n] each pair's -log sum_k w_k sigmoid(m_k); log_weights, margins: [..., n, K]."""
    return -torch.logsumexp(log_weights + F.logsigmoid(margins), dim=-1)


def plain_nll(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[...] mixture NLL -mean_i log sum_k w_ik sigmoid(m_ik); log_weights, margins: [..., n, K]."""
    return _pair_values(log_weights, margins).mean(-1)


def calibrated_nll(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[...] mixture NLL -mean_i log sum_k w_ik sigmoid(s m_ik) at the best single scale s = 1/T of
    `CALIBRATION_SCALES` (all heads share it): how well the mixture ranks, whatever its confidence.
    log_weights, margins: [..., n, K]. Scaling every margin by a power of 2^(1/4) inside the grid
    leaves the value unchanged."""
    return _grid_nll(log_weights, margins).min(0).values


# The criteria each MixtureConfig.stop_on watches, in order (the first breaks ties between best steps,
# the last chooses among restarts).
STOP_CRITERIA = {"nll": ("nll",), "calibrated-nll": ("calibrated-nll",), "later-plateau": ("nll", "calibrated-nll")}
CRITERION_VALUES = {"nll": plain_nll, "calibrated-nll": calibrated_nll}


def pair_nll(criterion: str, log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[n] each pair's share of CRITERION_VALUES[criterion] (their mean is its value); log_weights,
    margins: [n, K]. For 'calibrated-nll', at the scale that minimises the mean."""
    scale = 1.0
    if criterion == "calibrated-nll":
        scale = float(CALIBRATION_SCALES[int(_grid_nll(log_weights, margins).argmin())])
    return _pair_values(log_weights.double(), scale * margins.double())


def recorded_z(z: float | None) -> float | None:
    """A paired z as the fit record keeps it: finite (clipped to +-1e6, for metrics.json), 3 decimals."""
    return None if z is None else round(max(-1e6, min(1e6, z)), 3)


def paired_z(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """How many standard errors of the per-pair difference `ours` lies below `theirs` (per-pair values on
    the same pairs; positive: ours lower). +-inf for a difference without spread, 0 for none."""
    diff = (theirs - ours).double()
    mean = float(diff.mean())
    se = float(diff.std()) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    if se > 0:
        return mean / se
    return math.copysign(math.inf, mean) if mean else 0.0


def stopping_nll(config: MixtureConfig, log_weights: torch.Tensor, margins: torch.Tensor, first_only: bool = False) -> torch.Tensor:
    """[C, ...] the held-out values early stopping minimises (MixtureConfig.stop_on), one row per
    criterion of STOP_CRITERIA[config.stop_on] (only the first with `first_only`: the training curve)."""
    criteria = STOP_CRITERIA[config.stop_on][: 1 if first_only else None]
    return torch.stack([CRITERION_VALUES[c](log_weights, margins) for c in criteria])


class Plateaus:
    """Early stopping's bookkeeping: the best value, step and weights of each (criterion, restart), and
    per criterion the evaluations since any restart last improved on it."""

    def __init__(self, criteria: tuple, restarts: int, min_delta: float):
        self.criteria, self.min_delta = criteria, min_delta
        self.best = [[float("inf")] * restarts for _ in criteria]
        self.step = [[0] * restarts for _ in criteria]
        self.weights: list = [[None] * restarts for _ in criteria]
        self.since = [0] * len(criteria)

    def update(self, step: int, values: list, snapshot: Callable[[int], list]) -> None:
        """values[c][r]: criterion c of restart r at `step`; snapshot(r) gives restart r's weights."""
        taken: dict = {}
        for c, row in enumerate(values):
            improved = False
            for r, value in enumerate(row):
                best = self.best[c][r]
                if not math.isfinite(best) or value < best - self.min_delta * abs(best):
                    if r not in taken:
                        taken[r] = snapshot(r)
                    self.best[c][r], self.step[c][r], self.weights[c][r] = value, step, taken[r]
                    improved = True
            self.since[c] = 0 if improved else self.since[c] + 1

    def stale(self, patience: int) -> bool:
        """Every criterion has gone `patience` evaluations without improving."""
        return min(self.since) >= patience

    def reset(self) -> None:
        self.since = [0] * len(self.criteria)

    def keep_restarts(self, rows: list[int]) -> None:
        """Keep the bookkeeping of restarts `rows` only, in that order."""
        for table in (self.best, self.step, self.weights):
            for c in range(len(self.criteria)):
                table[c] = [table[c][r] for r in rows]

    def kept(self, r: int = 0) -> int:
        """The criterion whose best step (of restart r) is the latest; ties go to the first."""
        steps = [s[r] for s in self.step]
        return steps.index(max(steps))


# ------------------------------------------------------------------------------------------------
# trainers: one optimiser step on a batch, held-out NLL, best-weight snapshots
# ------------------------------------------------------------------------------------------------
def _adamw(params: list[torch.Tensor], config: MixtureConfig) -> torch.optim.Optimizer:
    try:  # the fused kernel: one op per step for all parameters
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class FlatAdamW:
    """AdamW over one flat buffer that every parameter is a view of (and one flat gradient buffer):
    a single fused kernel call per step, without the Python overhead of `torch.optim` around it (at
    batch 32 that overhead is as large as the update). Elementwise, so it equals AdamW per parameter;
    falls back to torch.optim.AdamW where the fused op is missing."""

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, config: MixtureConfig, state: dict | None = None):
        self.flat, self.grad, self.config = flat, grad, config
        state = state or {}
        self.exp_avg = state.get("exp_avg", torch.zeros_like(flat))
        self.exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(flat))
        self.steps = state.get("step", torch.zeros((), dtype=torch.float32, device=flat.device))
        self.fused = hasattr(torch, "_fused_adamw_") and flat.device.type in ("cpu", "cuda")
        if not self.fused:
            self.opt = _adamw([self.flat], config)
            self.opt.state[self.flat] = {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def step(self, lr: float) -> None:
        if not self.fused:
            self.flat.grad = self.grad
            _set_lr(self.opt, lr)
            self.opt.step()
            return
        self.steps += 1
        torch._fused_adamw_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps], lr=lr,
                            beta1=0.9, beta2=0.999, weight_decay=self.config.weight_decay, eps=1e-8, amsgrad=False, maximize=False)

    def state(self) -> dict:
        return {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}


class MicroStack:
    """R `micro` models (K heads + router) trained side by side with a hand-written backward.

    Layout (R restarts, K heads, H router width, d inputs): heads [d, R*K], first router layer [d, R*H]
    (or [d, R*K] for the linear router) + bias, second layer [R, H, K] + bias [R, K], all views of one
    flat buffer (gradients likewise). Every pair-level product is one matmul over all restarts; the loss
    of restart r depends on its own slice only, and AdamW is elementwise, so the stack is exactly R
    independent fits on the same batches.
    """

    def __init__(self, models: list[MixtureRewardModel], config: MixtureConfig, device: torch.device, alphas: list[float] | None = None):
        self.config, self.k, self.mlp = config, models[0].k, config.router == "mlp"
        self._set_alphas(alphas or [config.alpha] * len(models), device)
        linears = [[m for m in model.router.net if isinstance(m, torch.nn.Linear)] for model in models]
        values = [torch.cat([m.heads.detach().T for m in models], 1), torch.cat([ls[0].weight.detach().T for ls in linears], 1),
                  torch.cat([ls[0].bias.detach() for ls in linears])]
        if self.mlp:
            values += [torch.stack([ls[1].weight.detach().T for ls in linears]), torch.stack([ls[1].bias.detach() for ls in linears])]
        self.templates = models
        self._build([v.to(device, torch.float32) for v in values], None)

    def _build(self, values: list[torch.Tensor], state: dict | None) -> None:
        shapes = [v.shape for v in values]
        sizes = [v.numel() for v in values]
        flat = torch.cat([v.reshape(-1) for v in values])
        grad = torch.zeros_like(flat)
        self.params = [t.view(shape) for t, shape in zip(flat.split(sizes), shapes)]
        self.grads = [t.view(shape) for t, shape in zip(grad.split(sizes), shapes)]
        self.opt = FlatAdamW(flat, grad, self.config, state)

    def _set_alphas(self, alphas: list[float], device: torch.device) -> None:
        """Each restart's regulariser weight: one number when they share it, else a [R, 1, 1] tensor."""
        self.alphas = list(alphas)
        self.alpha = alphas[0] if len(set(alphas)) == 1 else torch.tensor(alphas, dtype=torch.float32, device=device).view(-1, 1, 1)

    @property
    def restarts(self) -> int:
        return self.params[0].shape[1] // self.k

    def _margins(self, d: torch.Tensor) -> torch.Tensor:
        """[R, n, K] head margins of difference vectors d [n, d]."""
        return (d @ self.params[0]).view(d.shape[0], self.restarts, self.k).transpose(0, 1)

    def _router(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(hidden [R, n, H] after ReLU or None, log weights [R, n, K]) of router inputs x [n, d]."""
        n = x.shape[0]
        first = torch.addmm(self.params[2], x, self.params[1])
        if self.mlp:
            hidden = first.clamp_min_(0).view(n, self.restarts, -1).transpose(0, 1)
            logits = torch.baddbmm(self.params[4].unsqueeze(1), hidden, self.params[3])
        else:
            hidden, logits = None, first.view(n, self.restarts, self.k).transpose(0, 1)
        return hidden, torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def step(self, d: torch.Tensor, x: torch.Tensor, lr: float, want_loss: bool = True) -> torch.Tensor | None:
        """One AdamW step of every restart on the batch (d [B, d] differences, x [B, d] router inputs);
        returns the mean over restarts of the batch loss (NLL + regulariser) as a 0-d tensor, or None
        without `want_loss` (a few small ops fewer per step)."""
        config, (r, k), n = self.config, (self.restarts, self.k), d.shape[0]
        margins = self._margins(d)
        hidden, log_w = self._router(x)
        joint = log_w + F.logsigmoid(margins)
        top = joint.amax(-1, keepdim=True)
        post = (joint - top).exp_()
        total = post.sum(-1, keepdim=True)
        post /= total  # posterior over heads of each pair
        loss = -(top.sum() + total.log().sum()) / n if want_loss else None
        weights = log_w.exp()
        g_log_w = post.mul_(-1.0 / n)
        g_margins = g_log_w * torch.sigmoid(margins.neg_())
        alpha = self.alpha  # a number, or [R, 1, 1] when the restarts differ in it
        if any(self.alphas):
            if config.balance == "batch":
                log_fbar = (weights.sum(1, keepdim=True) / n).log_()
                if want_loss:
                    loss = loss + _weighted_sum(alpha, log_fbar.exp() * log_fbar)
                g_log_w += weights * (log_fbar + 1.0) * (alpha / n)
            else:
                if want_loss:
                    loss = loss + _weighted_sum(alpha, weights * log_w) / n
                g_log_w += weights * (log_w + 1.0) * (alpha / n)
        g_logits = g_log_w - weights * g_log_w.sum(-1, keepdim=True)
        torch.mm(d.T, g_margins.transpose(0, 1).reshape(n, r * k), out=self.grads[0])
        if self.mlp:
            g_hidden = torch.bmm(g_logits, self.params[3].transpose(1, 2)).mul_(hidden > 0)
            g_first = g_hidden.transpose(0, 1).reshape(n, -1)
            torch.bmm(hidden.transpose(1, 2), g_logits, out=self.grads[3])
            torch.sum(g_logits, 1, out=self.grads[4])
        else:
            g_first = g_logits.transpose(0, 1).reshape(n, r * k)
        torch.mm(x.T, g_first, out=self.grads[1])
        torch.sum(g_first, 0, out=self.grads[2])
        self.opt.step(lr)
        return loss / r if want_loss else None

    @torch.no_grad()
    def heldout_nll(self, d: torch.Tensor, table: torch.Tensor, inverse: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """[C, R] mixture NLL (no regulariser) on held-out pairs, one row per early-stopping criterion
        (`stopping_nll`): d [m, d]; router inputs table[inverse] (the held-out slice's distinct router
        rows, so the router runs once per row)."""
        _, log_w = self._router(table)
        return stopping_nll(self.config, log_w[:, inverse], self._margins(d), first_only)

    @torch.no_grad()
    def heldout_pair_values(self, d: torch.Tensor, table: torch.Tensor, inverse: torch.Tensor, criteria: tuple) -> torch.Tensor:
        """[R, C, m] each restart's per-pair values (`pair_nll`) of each criterion on held-out pairs (arguments
        as in `heldout_nll`): what `MixtureConfig.refit_se` compares evaluations by."""
        _, log_w = self._router(table)
        log_w, margins = log_w[:, inverse], self._margins(d)
        return torch.stack([torch.stack([pair_nll(c, log_w[r], margins[r]) for c in criteria]) for r in range(self.restarts)])

    def _pick(self, r: int) -> list:
        """Functions taking restart r's slice of each parameter (same layout for the optimiser state)."""
        k, h = self.k, (self.params[1].shape[1] // self.restarts)
        pick = [lambda t: t[:, r * k : (r + 1) * k], lambda t: t[:, r * h : (r + 1) * h], lambda t: t[r * h : (r + 1) * h]]
        return pick + ([lambda t: t[r : r + 1], lambda t: t[r : r + 1]] if self.mlp else [])

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [p.numel() for p in self.params]
        return [t.view(p.shape) for t, p in zip(flat.split(sizes), self.params)]

    def snapshot(self, r: int) -> list[torch.Tensor]:
        """Restart r's parameters (cloned)."""
        return [f(p).clone() for f, p in zip(self._pick(r), self.params)]

    def keep(self, rows: list[int]) -> None:
        """Drop every restart but `rows` (which go on in that order, as restarts 0, 1, ...); their optimiser
        state goes on unchanged."""
        picks, old = [self._pick(r) for r in rows], self.opt.state()

        def take(tensors: list[torch.Tensor]) -> list[torch.Tensor]:  # rows' slices of each parameter's layout
            return [torch.cat([pick[i](t) for pick in picks], dim) for i, (t, dim) in enumerate(zip(tensors, (1, 1, 0, 0, 0)))]

        state = {"step": old["step"]}
        for name in ("exp_avg", "exp_avg_sq"):
            state[name] = torch.cat([t.reshape(-1) for t in take(self._views(old[name]))])
        self._build(take(self.params), state)
        self.templates = [self.templates[r] for r in rows]
        self._set_alphas([self.alphas[r] for r in rows], self.params[0].device)

    @torch.no_grad()
    def model_outputs(self, weights: list[torch.Tensor], r: int, d: torch.Tensor, table: torch.Tensor, inverse: torch.Tensor) -> tuple:
        """(log weights [m, K], margins [m, K]) of restart r with `weights` (a snapshot) on held-out pairs
        (arguments as in `heldout_nll`)."""
        model = self.to_model(weights, r)
        return model.log_weights(table)[inverse], d @ model.head_vectors().T

    def to_model(self, weights: list[torch.Tensor], r: int) -> MixtureRewardModel:
        """Restart r's template model with `weights` (a snapshot) loaded."""
        model = self.templates[r if len(self.templates) > 1 else 0]
        linears = [m for m in model.router.net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            model.heads.copy_(weights[0].T)
            linears[0].weight.copy_(weights[1].T)
            linears[0].bias.copy_(weights[2])
            if self.mlp:
                linears[1].weight.copy_(weights[3].reshape(linears[1].weight.T.shape).T)
                linears[1].bias.copy_(weights[4].reshape(-1))
        return model


def _weighted_sum(alpha: float | torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """alpha times the sum of `values` [R, ...], alpha a number or one per restart ([R, 1, 1])."""
    return (alpha * values).sum() if isinstance(alpha, torch.Tensor) else alpha * values.sum()


def batch_loss(model: MixtureRewardModel, config: MixtureConfig, d: torch.Tensor, x: torch.Tensor | None, diff_rms: float) -> torch.Tensor:
    """The training loss of a batch for any method, by autograd (the reference for `MicroStack.step`)."""
    margins = d @ model.head_vectors().T
    if config.method in ("micro", "static"):
        log_w = model.log_weights(x if x is not None else margins)
        loss = mixture_nll(log_w, margins)
        if config.alpha:
            loss = loss + config.alpha * weight_regulariser(log_w, config.balance)
        return loss
    loss = per_head_bt(margins)
    if config.method == "ensemble" and config.prior_l2:
        loss = loss + 0.5 * config.prior_l2 * diff_rms**2 * model.heads.pow(2).sum()
    return loss


class AutogradTrainer:
    """One model of any method, trained by autograd on `batch_loss` (single, static, ensemble; micro as the reference)."""

    restarts = 1

    def __init__(self, model: MixtureRewardModel, config: MixtureConfig, diff_rms: float):
        self.model, self.config, self.diff_rms = model, config, diff_rms
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = _adamw(self.params, config)

    def step(self, d: torch.Tensor, x: torch.Tensor | None, lr: float, want_loss: bool = True) -> torch.Tensor:
        loss = batch_loss(self.model, self.config, d, x, self.diff_rms)
        _set_lr(self.opt, lr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    @torch.no_grad()
    def heldout_nll(self, d: torch.Tensor, table: torch.Tensor | None, inverse: torch.Tensor | None, first_only: bool = False) -> torch.Tensor:
        """[C, 1] held-out NLL: the mixture's for micro / static, the mean per-head BT loss for single / ensemble."""
        margins = d @ self.model.head_vectors().T
        if self.config.method == "micro":
            return stopping_nll(self.config, self.model.log_weights(table)[inverse], margins, first_only).reshape(-1, 1)
        if self.config.method == "static":
            return stopping_nll(self.config, self.model.log_weights(margins), margins, first_only).reshape(-1, 1)
        return (per_head_bt(margins) / margins.shape[1]).reshape(1, 1)

    def snapshot(self, r: int) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def keep(self, r: int) -> None:
        pass

    def to_model(self, weights: list[torch.Tensor], r: int) -> MixtureRewardModel:
        with torch.no_grad():
            for p, w in zip(self.params, weights):
                p.copy_(w)
        return self.model


# ------------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------------
@dataclass
class FitRecord:
    """What a fit did: written to metrics.json under "fit" and kept on the model as `fit_record`."""

    schedule: str  # "early-stopping" | "fixed-epochs"
    steps: int = 0
    best_step: int = 0
    stop_reason: str = ""  # "patience" | "max_steps" | "epochs"
    train_pairs: int = 0
    heldout_pairs: int = 0
    plan: dict = field(default_factory=dict)
    restarts: int = 1
    chosen_restart: int = 0
    restart_nll: list = field(default_factory=list)  # best held-out NLL of each restart at the choice
    start_z: float | None = None  # with several head scales: paired z of the best later-scale start vs the first scale's
    curve: list = field(default_factory=list)  # [{"step", "heldout_nll": [per live restart], "train_loss", "lr"}]
    # train_loss: with early stopping, the mean NLL over live restarts on a fixed sample of fit pairs as
    # large as the held-out slice (comparable with the held-out NLL); with fixed epochs, the epoch's mean loss
    best_heldout_nll: float | None = None  # of the kept weights of the search (before any refit)
    refit_steps: int = 0  # steps of the refit on all pairs (0: the kept weights are the returned model)
    kept_criterion: str = ""  # whose best weights were kept: "nll" | "calibrated-nll" (early stopping)
    criterion_best_steps: dict = field(default_factory=dict)  # each watched criterion's best step
    head_init: float | None = None  # the initial head scale of the kept start (early stopping)
    # cross-validation (heads/fit.py) instead of one held-out slice: the number of folds (0: one slice), and
    # per fold the best step and best held-out NLL of the chosen start; `curve` is then the first fold's
    folds: int = 0
    fold_best_steps: list = field(default_factory=list)
    fold_heldout_nll: list = field(default_factory=list)
    # the router regulariser's weight of the returned `micro` fit; with MixtureConfig.alpha_alternatives each
    # weight's held-out value of the restart criterion (alpha first: pooled over the folds; on one slice
    # where the weights were last compared: their best starts at the restart choice, or the kept weights
    # at the end of the search for those that went on), and the paired z of the lowest alternative against
    # alpha there (None: alpha was the lowest)
    alpha: float | None = None
    alpha_nll: list = field(default_factory=list)
    alpha_z: float | None = None
    # MixtureConfig.refit_se > 0 (one held-out slice): the last evaluation within refit_se standard errors of
    # the best, whose step sets the refit's length (0: the best step does)
    refit_from_step: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _fit(train: CacheSplit, config: MixtureConfig, log: Callable[[dict], None] | None, reference: bool = False,
         steps: int | None = None, init: MixtureRewardModel | None = None, *, split: tuple | None = None,
         only_start: int | None = None, until_choice: bool = False) -> Any:
    """The fit; `steps` (with config.epochs None) runs exactly that many steps of the fixed warm-up +
    cosine schedule on all pairs (the refit after early stopping), from `init`'s weights if given.
    Early stopping only: `split` = (fit rows, held-out rows) replaces the held-out slice of
    `heldout_rows` (a fold of cross-validation); `only_start` trains that start of `start_grid(config)`
    alone; `until_choice` returns, at the point where the best start would be chosen, the [starts, held-out
    pairs] per-pair values of the restart criterion at each start's best weights (`pair_nll`) instead of
    a model."""
    device = torch.device(config.device)
    n, d = train.diff.shape
    if n == 0:
        raise ValueError("the training split has no pairs")

    diff = train.diff.to(device, torch.float32)
    diff_rms = float(train.diff[: min(n, 4096)].pow(2).mean().sqrt())
    early = config.epochs is None and steps is None
    if early:
        fit_rows, held_rows = split if split is not None else heldout_rows(train, config.holdout, config.holdout_max_pairs, config.seed)
    else:
        fit_rows, held_rows = torch.arange(n), torch.zeros(0, dtype=torch.long)
    fit_rows = None if not early else fit_rows.to(device)

    prior_unit = diff_rms
    if config.method == "ensemble" and config.prior_calibration == "single-head":
        # The priors' margins should be of the size of a fitted head's margins, whatever the data: on a
        # weak-signal cache fitted margins are ~0.05 and priors of margin ~1 would drown every head.
        single = replace(config, method="single", epochs=config.epochs)
        reference_head = _fit(train, single, None).head_vectors()[0].detach().to(device)
        margin_std = float((diff[: min(n, 4096)] @ reference_head).std())
        prior_unit = diff_rms / max(margin_std, 1e-6)

    uses_router = config.method == "micro"
    table = index = None
    if uses_router:
        table, index = router_table(train, config.router_input)
        table, index = table.to(device, torch.float32), index.to(device)
    several = uses_router and early and not reference and init is None  # restarts, one set per head scale (and alpha)
    grid = start_grid(config) if several else [Start(config.alpha, config.head_init[0], 0)]
    scales = [g.head_init for g in grid]
    starts = range(len(grid)) if only_start is None else [only_start]
    models = ([copy.deepcopy(init).to(device)] if init is not None else
              [build_model(replace(config, seed=config.seed + 7919 * grid[r].seed, head_init=(grid[r].head_init,)), d, prior_unit) for r in starts])
    restarts = len(models)
    if uses_router and not reference:
        trainer = MicroStack(models, config, device, [grid[r].alpha for r in starts])
    else:
        trainer = AutogradTrainer(models[0].to(device).train(), config, diff_rms)

    n_fit = n if fit_rows is None else len(fit_rows)
    record = FitRecord(schedule="early-stopping" if early else "fixed-epochs", train_pairs=n_fit, heldout_pairs=len(held_rows), restarts=restarts,
                       chosen_restart=only_start or 0)
    if early:
        plan = step_plan(n_fit, config)
        record.plan = plan.__dict__.copy()

        def probe(rows: torch.Tensor) -> tuple:
            """(differences, distinct router rows, inverse) of some pairs, for `trainer.heldout_nll`."""
            rows = rows.to(device)
            if not uses_router:
                return diff[rows], None, None
            distinct, inverse = torch.unique(index[rows], return_inverse=True)
            return diff[rows], table[distinct], inverse

        held = probe(held_rows)
        # the training NLL on as many fit pairs, for the curve (the steps themselves skip the loss value)
        seen = probe(fit_rows[torch.randperm(n_fit, generator=torch.Generator().manual_seed(config.seed))[: len(held_rows)].to(device)])
        total = plan.max_steps
    else:
        total = steps if steps is not None else config.epochs * math.ceil(n / config.batch_size)
        schedule = [config.lr * lr_factor(s, total, config.warmup) for s in range(total)]
    gen = torch.Generator().manual_seed(config.seed)

    criteria = STOP_CRITERIA[config.stop_on] if uses_router or config.method == "static" else ("nll",)
    plateaus = Plateaus(criteria, restarts, config.min_delta)
    # refit_se: every evaluation's per-pair held-out values, [live restarts, criteria, held-out pairs], and
    # which starts (of `grid`) the live restarts are
    pair_history: list[tuple[int, torch.Tensor, list[int]]] = []
    live, pending = list(starts), restarts > 1  # the starts in the stack; the restart choice still to come
    keep_pair_history = (early and config.refit_se > 0 and config.refit and n <= config.refit_max_pairs and uses_router
                         and not reference and not until_choice)
    lr_scale, drops = 1.0, 0
    history, step, start, running, count = [], 0, time.perf_counter(), 0.0, 0
    stop = ""
    while not stop:
        order = torch.randperm(n_fit, generator=gen).to(device)
        if fit_rows is not None:
            order = fit_rows[order]
        for lo in range(0, n_fit, config.batch_size):
            batch = order[lo : lo + config.batch_size]
            if early:
                lr = config.lr * lr_scale * min(1.0, (step + 1) / plan.warmup_steps)
            else:
                lr = schedule[step]
            x = table.index_select(0, index.index_select(0, batch)) if uses_router else None
            loss = trainer.step(diff.index_select(0, batch), x, lr, want_loss=not early)
            if loss is not None:
                running, count = running + loss, count + 1
            step += 1
            if early and (step % plan.eval_every == 0 or step >= total):
                values = trainer.heldout_nll(*held).tolist()
                nll = values[0]
                _check_finite(config, min(nll), f"step {step}")
                mean_loss = float(trainer.heldout_nll(*seen, first_only=True)[0].mean())
                plateaus.update(step, values, trainer.snapshot)
                if keep_pair_history:
                    pair_history.append((step, trainer.heldout_pair_values(*held, criteria), live))
                best, best_step = plateaus.best[0], plateaus.step[0]
                point = {"step": step, "heldout_nll": [round(v, 6) for v in nll], "train_loss": round(mean_loss, 6), "lr": lr}
                if len(grid) > 1:
                    point["starts"] = list(live)  # which start each value is
                if len(values) > 1:
                    point["heldout_calibrated_nll"] = [round(v, 6) for v in values[1]]
                record.curve.append(point)
                history.append(mean_loss)
                if log is not None:
                    log({"step": step, "epoch": step * config.batch_size / n_fit, "loss": mean_loss, "heldout_nll": min(nll),
                         "best_nll": min(best), "best_step": best_step[int(np.argmin(best))], "lr": lr, "restarts": trainer.restarts,
                         "seconds": time.perf_counter() - start})
                if pending and step >= min(plan.restart_steps, plan.min_steps):
                    if until_choice:
                        return torch.stack([start_values(trainer, plateaus, criteria[-1], held, r) for r in range(trainer.restarts)])
                    chosen, alpha_best, leads = choose_start(trainer, plateaus, grid, criteria[-1], held, config.scale_choice_z)
                    # alpha's chosen start goes on, and beside it each alternative weight's that leads it by the bar
                    go_on = [chosen[0]] + [c for c, z in zip(chosen[1:], leads[1:]) if z >= config.scale_choice_z]
                    live, start_z = [r for r, _ in go_on], [z for _, z in go_on]
                    record.chosen_restart, record.start_z = live[0], recorded_z(start_z[0])
                    record.restart_nll = [round(b, 6) for b in plateaus.best[-1]]
                    if len(alpha_best) > 1:
                        lowest = int(np.argmin(alpha_best))
                        record.alpha_nll, record.alpha_z = [round(v, 6) for v in alpha_best], recorded_z(leads[lowest]) if lowest else None
                    trainer.keep(live)
                    plateaus.keep_restarts(live)
                    pending = False
                if step >= total:
                    stop = "max_steps"
                elif plateaus.stale(config.patience) and step >= plan.min_steps:
                    if drops < config.lr_drops:
                        drops, lr_scale = drops + 1, lr_scale * config.lr_drop_factor
                        plateaus.reset()
                    else:
                        stop = "patience"
            if not early and step >= total:
                stop = "epochs"
            if stop:
                break
        if not early and count:
            history.append(float(running) / count)
            _check_finite(config, history[-1], f"step {step}")
            if log is not None:
                log({"step": step, "epoch": step * config.batch_size / n, "loss": history[-1], "heldout_nll": None,
                     "best_step": step, "lr": schedule[step - 1], "seconds": time.perf_counter() - start})
            running, count = 0.0, 0

    record.steps = step
    record.stop_reason = stop
    if early:
        i = 0  # the live restart returned
        if len(live) > 1 and not pending:  # alternative weights went on: their kept weights against alpha's
            values = [pair_nll(criteria[-1], *trainer.model_outputs(plateaus.weights[plateaus.kept(j)][j], j, *held)) for j in range(len(live))]
            means = [float(v.mean()) for v in values]
            i, alpha_z = scale_choice(means, [grid[r].alpha for r in live], lambda j: values[j], config.scale_choice_z)
            weights = list(dict.fromkeys(g.alpha for g in grid))  # the order of record.alpha_nll
            for j, r in enumerate(live):
                record.alpha_nll[weights.index(grid[r].alpha)] = round(means[j], 6)
            record.chosen_restart, record.start_z, record.alpha_z = live[i], recorded_z(start_z[i]), recorded_z(alpha_z)
        c = plateaus.kept(i)
        model = trainer.to_model(plateaus.weights[c][i], i)
        record.best_step, record.best_heldout_nll = plateaus.step[c][i], round(plateaus.best[c][i], 6)
        record.kept_criterion = criteria[c]
        record.head_init = scales[record.chosen_restart]
        if uses_router:
            record.alpha = grid[record.chosen_restart].alpha
        record.criterion_best_steps = {name: plateaus.step[j][i] for j, name in enumerate(criteria)}
        if keep_pair_history:
            record.refit_from_step = last_within(pair_history, record.best_step, c, record.chosen_restart, config.refit_se)
        model.fit_record = record
        model = refit(train, config, model, reference)
    else:
        model = trainer.to_model(trainer.snapshot(0), 0)
        record.best_step = step
    model = model.cpu().eval()
    model.train_history = history
    model.train_steps = step + record.refit_steps
    model.fit_record = record
    return model


def refit(train: CacheSplit, config: MixtureConfig, search: MixtureRewardModel, reference: bool = False) -> MixtureRewardModel:
    """The refit after an early-stopping search (`search`: its kept weights and record), when `config.refit` asks for
    one on a cache of at most `refit_max_pairs` pairs (else the search's kept weights): the held-out slice
    has decided how long to train; the chosen initialisation is trained again on every pair for as many
    epochs' worth of steps, with warm-up + cosine decay (which settles the weights better than the constant
    rate of the search). Sets `refit_steps` of the search's record."""
    record, n = search.fit_record, len(train.diff)
    if not (config.refit and n <= config.refit_max_pairs):
        return search
    record.refit_steps = max(1, int(round(config.refit_length * (record.refit_from_step or record.best_step) * n / record.train_pairs)))
    start = start_grid(config)[record.chosen_restart]
    # the refit starts as the chosen start did, with its regulariser weight
    config = replace(config, seed=config.seed + 7919 * start.seed, head_init=(start.head_init,), alpha=start.alpha)
    if config.refit_warm:  # continue the kept weights on every pair, a shorter cosine pass
        record.refit_steps = max(1, int(round(config.refit_warm * record.refit_steps)))
        return _fit(train, config, None, reference, steps=record.refit_steps, init=search)
    return _fit(train, config, None, reference, steps=record.refit_steps)


def last_within(history: list, best_step: int, criterion: int, start: int, bar: float) -> int:
    """The last evaluation step, at or after `best_step`, whose per-pair values of `criterion` are no more
    than `bar` standard errors of the per-pair difference above the best step's (`paired_z`), for the kept
    start `start`. `history`: (step, [live restarts, criteria, pairs], the start each live restart is)."""
    rows = {step: values[live.index(start), criterion] for step, values, live in history}
    best = rows[best_step]
    return max(step for step, values in rows.items() if step >= best_step and paired_z(values, best) >= -bar)


def start_scales(config: MixtureConfig) -> list[float]:
    """The head scale of each start of an early-stopping `micro` fit with restarts, scale-major: the first
    `restarts` starts are those of the first scale (seeds seed, seed + 7919, ... as with one scale)."""
    return [scale for scale in config.head_init for _ in range(max(1, config.restarts))]


class Start(NamedTuple):
    """One start of an early-stopping `micro` fit: its regulariser weight, head scale, and seed index
    (initialised from config.seed + 7919 * seed)."""

    alpha: float
    head_init: float
    seed: int


def start_grid(config: MixtureConfig) -> list[Start]:
    """Every start of an early-stopping `micro` fit on one held-out slice: those of `alpha`
    (`start_scales`, seed index = position), then for each of `alpha_alternatives` the first
    `alpha_restarts` restarts of each head scale, initialised as the starts of `alpha` with the same
    scale and restart number (the same seeds). The starts and the choice among them are in
    `choose_start`."""
    restarts = max(1, config.restarts)
    grid = [Start(config.alpha, scale, r) for r, scale in enumerate(start_scales(config))]
    for alpha in dict.fromkeys(config.alpha_alternatives):
        if alpha != config.alpha:
            grid += [Start(alpha, scale, i * restarts + j) for i, scale in enumerate(config.head_init) for j in range(min(restarts, config.alpha_restarts))]
    return grid


def scale_choice(means: list, scales: list, pair_values: Callable[[int], torch.Tensor], bar: float) -> tuple[int, float | None]:
    """(the start that goes on, the paired z it was judged by or None): the lowest of `means` (a criterion
    per start), except that a start of a later head scale must lead the first scale's best start by `bar`
    standard errors of the per-pair difference (`pair_values(r)`: start r's per-pair values). The folds
    choose the regulariser weight the same way (`scales` then holds each candidate's alpha)."""
    keep = int(np.argmin(means))
    if scales[keep] == scales[0]:
        return keep, None
    home = min((r for r, scale in enumerate(scales) if scale == scales[0]), key=lambda r: means[r])
    z = paired_z(pair_values(keep), pair_values(home))
    return (keep if z >= bar else home), z


def start_values(trainer: MicroStack, plateaus: Plateaus, criterion: str, held: tuple, r: int) -> torch.Tensor:
    """Per-pair values of `criterion` on the held-out pairs `held` at start r's best weights for it."""
    return pair_nll(criterion, *trainer.model_outputs(plateaus.weights[-1][r], r, *held))


def choose_start(trainer: MicroStack, plateaus: Plateaus, grid: list[Start], criterion: str, held: tuple,
                 bar: float) -> tuple[list[tuple[int, float | None]], list[float], list[float | None]]:
    """The restart choice on one held-out slice, by the best held-out values of `criterion` (the last row of
    `plateaus`) and the per-pair values on the held-out pairs `held`: `scale_choice` among the starts of
    each regulariser weight (a start of a later head scale must lead by `bar` standard errors). Returns
    each weight's (start chosen, z of its head-scale choice), best value, and the paired z of its chosen
    start against alpha's (None for alpha), `alpha` first (the alternatives of `start_grid` after it)."""
    means = plateaus.best[-1]
    values = functools.cache(lambda r: start_values(trainer, plateaus, criterion, held, r))
    chosen = []
    for alpha in dict.fromkeys(g.alpha for g in grid):
        rows = [r for r, g in enumerate(grid) if g.alpha == alpha]
        keep, z = scale_choice([means[r] for r in rows], [grid[r].head_init for r in rows], lambda i, rows=rows: values(rows[i]), bar)
        chosen.append((rows[keep], z))
    leads = [None] + [paired_z(values(r), values(chosen[0][0])) for r, _ in chosen[1:]]
    return chosen, [means[r] for r, _ in chosen], leads


def _check_finite(config: MixtureConfig, loss: float, where: str) -> None:
    """Stop a diverged fit with the fix, instead of saving NaN weights."""
    if not math.isfinite(loss):
        raise ValueError(f"the {config.method} fit diverged: its loss became {loss} at {where} (lr {config.lr}); "
                         "lower --lr, or check the cache for extreme embedding values.")
