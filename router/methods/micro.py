"""`micro`: the stage-2 router (Algorithm 1, Hedge soft labels on the budget pairs), times Hedge's weights
over each user's budget pairs (`AdaptConfig.context_rate`).

Where the pairs carry no context the router cannot tell users apart, so it is not trained: a user's
routing is the stage-1 routing of the prompt (plus the user's own stage-1 weights when the run learned
them), times Hedge over the user's budget pairs -- the rule the reward server applies online.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..api import save_router
from ..hedge import adapt_routers, context_log_weights
from ..plugin import Budget, Plugin, Sweep, build_options


@dataclass
class MicroOptions:
    batch_size: int = 32
    """Pairs per router step (B.1)."""

    lr: float = 2e-3
    """AdamW learning rate of the router (stage 1's rate, B.1)."""

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1 or not float(self.lr) > 0:
            raise ValueError(f"micro: batch_size must be >= 1 and lr > 0, not {self.batch_size!r}, {self.lr!r}")


def routers(sweep: Sweep, budget: Budget | None, draws: list[dict] | None = None) -> list:
    """One adapted router per seed on the pooled budget pairs of all users (the stage-1 router itself where
    the pairs have no context); on `draws` instead of a budget's, computed afresh."""
    def make():
        if not sweep.contexts:
            return [sweep.model.router] * len(sweep.seeds)
        options = build_options(MicroOptions, sweep.config.options.get("micro", {}), "micro")
        chosen = draws or budget.draws
        idx = torch.as_tensor(np.stack([np.concatenate([d[a] for a in sorted(d)]) for d in chosen]))  # [S, A*B]
        device = torch.device(sweep.config.device)
        history: list = []
        with torch.enable_grad():  # callers may hold no_grad
            out = adapt_routers(sweep.model.router, sweep.inputs(sweep.train)[idx].to(device), sweep.train_losses[idx].to(device),
                                sweep.seeds, tau=sweep.config.tau, epochs=sweep.config.epochs, batch_size=options.batch_size,
                                lr=options.lr, history=history)
        if budget is not None:
            budget.shared["micro.history"] = history
        return out
    return make() if draws is not None else budget.once("micro.routers", make)


def user_weights(sweep: Sweep, budget: Budget) -> dict[str, torch.Tensor]:
    """{user name: [S, K]} Hedge log-weights over each user's budget pairs (empty at context_rate 0)."""
    def make():
        if sweep.config.context_rate == 0:
            return {}
        attrs = sorted(budget.draws[0])
        idx = torch.as_tensor(np.stack([np.stack([d[a] for a in attrs]) for d in budget.draws]))  # [S, A, B]
        table = context_log_weights(sweep.train_losses[idx], sweep.config.context_rate)  # [S, A, K]
        return {sweep.train.attributes[a]: table[:, j] for j, a in enumerate(attrs)}
    return budget.once("micro.hedge", make)


def offsets(sweep: Sweep, budget: Budget, i: int, split, users: torch.Tensor) -> torch.Tensor:
    """[n, K] log-weights added to seed i's router logits for rows of `split` whose users are `users`:
    Hedge over the user's budget pairs, plus the user's own stage-1 weights where the run has them."""
    hedge = user_weights(sweep, budget)
    own = getattr(sweep.model, "user_log_weights", None)
    k = sweep.model.k
    rows = []
    for name in split.attributes:
        w = hedge[name][i] if name in hedge else torch.zeros(k)
        if own is not None and not sweep.contexts:
            seen = own(name)
            w = w if seen is None else w + seen.to(w)
        rows.append(w)
    return torch.stack(rows)[users]


def weights(sweep: Sweep, budget: Budget, i: int, split, rows=None) -> torch.Tensor:
    """[n, K] seed i's routing of `split`'s rows (all by default)."""
    router = routers(sweep, budget)[i]  # trained (with gradients) on first use
    idx = torch.arange(len(split)) if rows is None else torch.as_tensor(rows)
    with torch.no_grad():
        logits = router(sweep.inputs(split)[idx].float())
        return torch.softmax(logits + offsets(sweep, budget, i, split, split.attribute[idx]).to(logits), dim=-1)


class Micro(Plugin):
    Options = MicroOptions

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return {s: (weights(sweep, budget, i, sweep.test) * sweep.test_margins).sum(-1) for i, s in enumerate(sweep.seeds)}


def save_routers(sweep: Sweep, budget: Budget) -> None:
    """Write each seed's adapted router (and its micro-refine heads) to OUT/routers/b{B}_s{seed}.safetensors."""
    if "micro.routers" not in budget.shared:
        return
    hedge, history, refined = user_weights(sweep, budget), budget.shared.get("micro.history"), budget.shared.get("refine.heads", {})
    for i, (s, r) in enumerate(zip(sweep.seeds, routers(sweep, budget))):
        heads = refined.get(s)
        info = {"budget": budget.size, "seed": s, "tau": sweep.config.tau, "epochs": sweep.config.epochs,
                "head_input": "context" if sweep.augmented else "response", "run_dir": str(sweep.run_dir.resolve()),
                "cache": str(sweep.cache.path.resolve()), "attributes": list(sweep.train.attributes),
                "masked_heads": sweep.model.masked_heads, "contexts": sweep.contexts,
                "label_entropy_last_epoch": history[-1]["label_entropy"] if history else None,
                "context_rate": sweep.config.context_rate,
                # masked heads' -inf is stored as 0: the router's own mask (masked_heads) removes them
                "context_log_weights": {name: [round(float(v), 6) if math.isfinite(v) else 0.0 for v in w[i].tolist()]
                                        for name, w in hedge.items()} or None,
                "refine_precision": heads["precision"] if heads else None,
                "refine_prior_scale": heads["scale"] if heads else None}
        save_router(sweep.out / "routers" / f"b{budget.size}_s{s}.safetensors", r, info,
                    refine={k: heads[k] for k in ("head", "attributes")} if heads else None)


def informativeness(sweep: Sweep, rule):
    """For an active `--acquire` rule: given the pairs asked so far (one {user: rows} per seed), one scorer
    per seed of pool rows, by the router adapted on those pairs (micro.router.acquire)."""
    def scorers(draws: list[dict]) -> list:
        inputs = sweep.inputs(sweep.train)
        return [lambda rows, r=r: rule(torch.softmax(r(inputs[rows].float()), -1), sweep.train_margins[rows])
                for r in routers(sweep, None, draws)]
    return scorers
