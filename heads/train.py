"""The two training loops of stage 1, read top to bottom: `train_fixed` (a warm-up + cosine schedule of a
given length: fixed epochs and the refit) and `Search` (early stopping of candidates side by side).

All tensors go to the device once; each step gathers a batch of difference vectors and router inputs by
index. A `Search` trains its candidates (heads/search.py) as one stack, in every fold at once (members
fold-major: fold f's candidates are the f-th block), evaluates both `CRITERIA` on each fold's held-out
pairs every `eval_every` steps, halves the candidates at the rungs, and stops when neither value has
improved for `PATIENCE` evaluations (between the step plan's minimum and maximum): the later of the two
best steps is kept ("the later plateau").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..embedcache.rows import DeviceSplit
from .config import BASE_BATCH, ROUTER_HIDDEN, MixtureConfig
from .criteria import CRITERIA, mixture_pair_nll, pair_values, paired_z
from .model import MixtureRewardModel
from .search import RUNGS, Candidate, halve
from .baselines import HeadTrainer
from . import stack as _stack
from .stack import MicroStack

#: early stopping: evaluations without an improvement of more than MIN_DELTA (relative) before the fit stops
PATIENCE, MIN_DELTA = 5, 1e-4
#: early stopping runs at least max(MIN_STEPS, MIN_EPOCHS) and at most max(MAX_STEPS, MAX_EPOCHS), in steps of 32 pairs
MIN_STEPS, MIN_EPOCHS, MAX_STEPS, MAX_EPOCHS = 1000, 0.25, 20_000, 4.0
#: the fraction of a schedule spent in linear warm-up (paper B.1)
WARMUP = 0.05


def build_model(config: MixtureConfig, hidden_size: int, candidate: Candidate, prior_unit: float = 1.0,
                users: list[str] | None = None) -> MixtureRewardModel:
    """The untrained model of a candidate, initialised from its seed alone (global RNG untouched). For the
    ensemble, prior margins have std rms(diff) / prior_unit; `users`: the user names of a micro fit with users."""
    weights = {"micro": "router", "static": "static", "single": "uniform", "ensemble": "uniform"}[config.method]
    model = MixtureRewardModel(hidden_size, config.num_heads, weights=weights, router=config.router, router_hidden=ROUTER_HIDDEN,
                               prior_scale=1.0 / max(prior_unit, 1e-12) if config.method == "ensemble" else 0.0,
                               seed=candidate.seed, head_init=candidate.head_init, users=users or ())
    if model.user_logits is not None and not _stack.USERS_READ_PROMPT:  # the router's logits are its last bias alone
        with torch.no_grad():
            model.router.net[-1].weight.zero_()
    return model


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first WARMUP of the steps, then cosine decay to zero."""
    warm = max(1, int(round(WARMUP * total)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


@dataclass(frozen=True)
class StepPlan:
    """Steps of an early-stopped search: at least `min_steps`, at most `max_steps`, an evaluation every
    `eval_every`, warm-up over `warmup_steps`, and the halving rungs."""

    min_steps: int
    max_steps: int
    eval_every: int
    warmup_steps: int
    rungs: tuple


def step_plan(n_fit: int, batch_size: int) -> StepPlan:
    """The plan for `n_fit` training pairs, made in steps of BASE_BATCH pairs and shrunk in proportion for a
    larger batch (the same pairs seen, in fewer steps); an evaluation every quarter epoch within [50, 500]."""
    per_epoch, factor = math.ceil(n_fit / BASE_BATCH), batch_size / BASE_BATCH
    lo = max(MIN_STEPS, int(round(MIN_EPOCHS * per_epoch)))
    hi = max(lo, MAX_STEPS, int(round(MAX_EPOCHS * per_epoch)))
    lo, hi = (max(1, math.ceil(v / factor)) for v in (lo, hi))
    every = max(1, int(round(min(500, max(50, per_epoch // 4)) / factor)))
    rungs = tuple(min(lo, max(1, math.ceil(r / factor))) for r in RUNGS)
    return StepPlan(lo, hi, every, max(1, int(round(WARMUP * lo))), rungs)


def make_trainer(config: MixtureConfig, data: DeviceSplit, models: list[MixtureRewardModel], alphas: list[float], l2: float) -> MicroStack | HeadTrainer:
    """The stack for `micro`, the heads' trainer for the baselines."""
    if config.method == "micro":
        return MicroStack(models, config, data.device, alphas)
    return HeadTrainer(models[0], config, data.device, l2)


def train_fixed(data: DeviceSplit, config: MixtureConfig, model: MixtureRewardModel, steps: int, alpha: float,
                l2: float = 0.0, log: Callable | None = None) -> tuple[MixtureRewardModel, list[float]]:
    """`steps` steps of warm-up + cosine decay on every pair from `model`'s weights; (model, mean loss of each pass)."""
    trainer = make_trainer(config, data, [model], [alpha], l2)
    n, gen, history, losses = len(data.diff), torch.Generator().manual_seed(config.seed), [], []
    batches, start = data.batches(torch.arange(n), config.batch_size, gen), time.perf_counter()
    per_pass = math.ceil(n / config.batch_size)
    for step in range(steps):
        batch = next(batches)
        losses.append(trainer.step(*data.inputs(batch), config.lr * lr_factor(step, steps), want_loss=True, users=data.users(batch)))
        if len(losses) == per_pass or step == steps - 1:
            history.append(float(np.mean(losses)))
            losses = []
            if not math.isfinite(history[-1]):
                raise ValueError(f"the {config.method} fit diverged: its loss became {history[-1]} at step {step + 1} "
                                 f"(lr {config.lr}); lower --lr, or check the cache for extreme embedding values.")
            if log is not None:
                log({"step": step + 1, "epoch": (step + 1) * config.batch_size / n, "loss": history[-1], "heldout_nll": None,
                     "best_step": step + 1, "lr": config.lr * lr_factor(step, steps), "seconds": time.perf_counter() - start})
    return trainer.to_model(trainer.snapshot(0)).cpu().eval(), history


class Search:
    """Early stopping of `cands` side by side, on one held-out slice or on every fold of `held` at once.

    After `run`: `live` (the candidates still training) and per (criterion, fold, candidate) `best`,
    `best_step`, `best_pairs` (the per-pair values at the best step) and, with `keep_weights` (one slice),
    `weights`; `history` (one slice) holds each evaluation's per-pair values of the live candidates. A
    candidate's values pooled over the folds (`pooled`: every held-out pair once) are what selects."""

    def __init__(self, data: DeviceSplit, config: MixtureConfig, cands: list[Candidate], home: list[bool], held: list[torch.Tensor],
                 trainer_for: Callable[[list[int]], object], keep_weights: bool = False):
        self.data, self.config, self.cands, self.home, self.keep_weights = data, config, cands, home, keep_weights
        n = len(data.diff)
        self.fold_of = torch.full((n,), -1, dtype=torch.long)
        for f, rows in enumerate(held):
            self.fold_of[rows] = f
        self.folds = len(held)
        self.rows = torch.arange(n) if self.folds > 1 else torch.nonzero(self.fold_of < 0).flatten()
        self.n_fit = float(np.mean([n - len(rows) for rows in held]))
        self.bounds = np.cumsum([0] + [len(rows) for rows in held]).tolist()
        self.plan = step_plan(int(self.n_fit), config.batch_size)
        self.probes = [data.probe(rows) for rows in held]
        sample = self.rows[self.fold_of[self.rows] != 0]
        self.seen = data.probe(sample[torch.randperm(len(sample), generator=torch.Generator().manual_seed(config.seed))[:2048]])
        self.live = list(range(len(cands)))
        self.trainer = trainer_for([c for _ in held for c in self.live])
        self.active = list(range(self.folds))  # the folds in the stack, in block order
        self._restack([f * len(self.live) + j for f in self.active for j in range(len(self.live))], self.live, self.active)
        self.best, self.best_step, self.best_pairs, self.weights = ([{} for _ in CRITERIA] for _ in range(4))
        self.since = [[0] * len(CRITERIA) for _ in held]  # per fold: evaluations since a live candidate improved
        self.history, self.curve, self.rungs, self.compared = [], [], [], {}
        self.candidate_steps, self.z = 0, None

    def _restack(self, rows: list[int], live: list[int], active: list[int]) -> None:
        """Keep the stack's models `rows`: candidates `live` in each of the folds `active`."""
        if len(rows) < len(self.live) * len(self.active):
            self.trainer.keep(rows)
        self.live, self.active = live, active
        self.member_fold = torch.tensor(active).repeat_interleave(len(live)).to(self.data.device)

    def values(self) -> torch.Tensor:
        """[2, live, held-out pairs] per-pair values of the live candidates, the active folds' pairs in order."""
        width, mixture = len(self.live), self.config.method in ("micro", "static")
        return torch.cat([pair_values(*self.trainer.outputs(b * width, (b + 1) * width, *self.probes[f]), mixture)
                          for b, f in enumerate(self.active)], dim=-1)

    def evaluate(self, step: int) -> torch.Tensor:
        """Update the best values of each live candidate; returns the values."""
        values = self.values()
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"the {self.config.method} fit diverged: its held-out NLL is not finite at step {step} "
                             f"(lr {self.config.lr}); lower --lr, or check the cache for extreme embedding values.")
        sizes = [self.bounds[f + 1] - self.bounds[f] for f in self.active]
        for f, fold in zip(self.active, values.split(sizes, dim=-1)):
            means = fold.mean(-1).tolist()
            for c in range(len(CRITERIA)):
                improved = False
                for j, i in enumerate(self.live):
                    best = self.best[c].get((f, i))
                    if best is None or not math.isfinite(best) or means[c][j] < best - MIN_DELTA * abs(best):
                        self.best[c][(f, i)], self.best_step[c][(f, i)], self.best_pairs[c][(f, i)], improved = means[c][j], step, fold[c, j], True
                        if self.keep_weights:
                            self.weights[c][(f, i)] = self.trainer.snapshot(j)
                self.since[f][c] = 0 if improved else self.since[f][c] + 1
        if self.folds == 1:
            self.history.append((step, {i: values[:, j].float() for j, i in enumerate(self.live)}))
        return values

    def pooled(self, i: int) -> torch.Tensor:
        """Candidate i's per-pair values of the selecting criterion at each fold's best step, every fold's pairs."""
        return torch.cat([self.best_pairs[-1][(f, i)] for f in range(self.folds)])

    def rung(self, step: int, last: bool) -> None:
        """Halve the live candidates (`halve`); keep the stack in step."""
        values = [self.pooled(i) for i in self.live]
        self.compared.update({i: float(v.mean()) for i, v in zip(self.live, values)})
        family = [(self.cands[i].alpha, self.cands[i].head_init) for i in self.live]
        keep, z = halve(values, family, [self.home[i] for i in self.live], last)
        width = len(self.live)
        self._restack([b * width + j for b in range(len(self.active)) for j in keep], [self.live[j] for j in keep], self.active)
        self.rungs.append({"step": step, "kept": list(self.live)})
        self.z = z if last else self.z

    def checkpoint(self, step: int, lr: float, log: Callable | None, start: float) -> str:
        """The evaluation at `step`: bookkeeping, curve, log, rungs; the stop reason, or ''."""
        means = self.evaluate(step).mean(-1)
        train = mixture_pair_nll(*self.trainer.outputs(0, len(self.live), *self.seen)).mean(-1)
        point = {"step": step, "heldout_nll": [round(float(v), 6) for v in means[0]],
                 "heldout_calibrated_nll": [round(float(v), 6) for v in means[1]],
                 "train_loss": round(float(train.mean()), 6), "lr": lr, "starts": list(self.live)}
        self.curve.append(point)
        if log is not None:
            best = min(self.live, key=lambda i: self.best[0][(0, i)])
            log({"step": step, "epoch": step * self.config.batch_size / self.n_fit, "loss": point["train_loss"],
                 "heldout_nll": min(point["heldout_nll"]), "best_nll": self.best[0][(0, best)], "best_step": self.best_step[0][(0, best)],
                 "lr": lr, "restarts": len(self.live), "seconds": time.perf_counter() - start})
        done = len(self.rungs)
        if len(self.live) > 1 and done < len(self.plan.rungs) and step >= self.plan.rungs[done]:
            self.rung(step, last=done == len(self.plan.rungs) - 1)
        if step >= self.plan.max_steps:
            return "max_steps"
        stale = [f for f in self.active if min(self.since[f]) >= PATIENCE]  # neither value improved for PATIENCE
        if step < self.plan.min_steps or not stale:
            return ""
        if len(stale) == len(self.active):
            return "patience"
        if len(self.rungs) == len(self.plan.rungs) or len(self.live) == 1:  # halving done: plateaued folds leave the stack
            width = len(self.live)
            go_on = [b for b, f in enumerate(self.active) if f not in stale]
            self._restack([b * width + j for b in go_on for j in range(width)], self.live, [self.active[b] for b in go_on])
        return ""

    def run(self, log: Callable | None = None) -> tuple[int, str]:
        """Train until the stop; (steps, stop reason)."""
        gen, plan, config = torch.Generator().manual_seed(self.config.seed), self.plan, self.config
        batches, start, step, stop = self.data.batches(self.rows, config.batch_size, gen), time.perf_counter(), 0, ""
        while not stop:
            batch = next(batches)
            mask = None if self.folds == 1 else (self.fold_of[batch.cpu()].to(self.data.device) != self.member_fold[:, None]).float()
            lr = config.lr * min(1.0, (step + 1) / plan.warmup_steps)
            self.trainer.step(*self.data.inputs(batch), lr, mask, users=self.data.users(batch))
            step += 1
            self.candidate_steps += len(self.live) * len(self.active)
            if step % plan.eval_every == 0 or step >= plan.max_steps:
                stop = self.checkpoint(step, lr, log, start)
        return step, stop

    def kept_criterion(self, f: int, i: int) -> int:
        """The criterion whose best step (fold f, candidate i) is the later; ties go to the first."""
        steps = [self.best_step[c][(f, i)] for c in range(len(CRITERIA))]
        return steps.index(max(steps))

    def last_within(self, i: int, bar: float) -> int:
        """One slice: the last evaluation step, at or after candidate i's kept best step, whose per-pair values
        of the kept criterion are within `bar` standard errors (`paired_z`) of the best step's."""
        c = self.kept_criterion(0, i)
        rows = {step: record[i][c] for step, record in self.history if i in record}
        best_step = self.best_step[c][(0, i)]
        return max(step for step, values in rows.items() if step >= best_step and paired_z(values, rows[best_step]) >= -bar)
