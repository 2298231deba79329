"""The trainer of the baselines: K linear Bradley-Terry heads without a router (single, static, ensemble),
with a hand-written gradient, driven by heads/train.py as `MicroStack` is."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .config import MixtureConfig
from .model import MixtureRewardModel
from .stack import FlatAdamW


class HeadTrainer:
    """K linear heads without a router, hand-written step: 'single' and 'ensemble' minimise K independent BT
    losses sum_k mean_i -log sigmoid(m_ik) (+ l2/2 ||heads||^2, the heads' frozen priors added to the
    margins); 'static' the mixture NLL with learned input-independent weights (+ alpha times their negative
    entropy), as heads/losses.py writes them."""

    size = 1

    def __init__(self, model: MixtureRewardModel, config: MixtureConfig, device: torch.device, l2: float = 0.0):
        self.model, self.l2, self.alpha = model.to(device), l2, config.alpha
        self.prior = model.prior.detach().T.contiguous()
        logits = model.static_logits.detach() if model.static_logits is not None else torch.zeros(0, device=device)
        flat = torch.cat([model.heads.detach().T.reshape(-1), logits])
        grad, n = torch.zeros_like(flat), self.prior.numel()
        self.w, self.v, self.gw, self.gv = flat[:n].view(self.prior.shape), flat[n:], grad[:n].view(self.prior.shape), grad[n:]
        self.opt = FlatAdamW(flat, grad)

    def log_weights(self) -> torch.Tensor:
        k = self.prior.shape[1]
        return torch.log_softmax(self.v, 0) if len(self.v) else torch.full((k,), -math.log(k), device=self.w.device)

    @torch.no_grad()
    def step(self, d: torch.Tensor, x: torch.Tensor | None, lr: float, mask: torch.Tensor | None = None, want_loss: bool = False,
             users: torch.Tensor | None = None) -> float | None:
        margins, n = d @ (self.w + self.prior), d.shape[0]
        if len(self.v):  # static: the mixture NLL and its weights' gradient
            log_w = self.log_weights()
            joint = log_w + F.logsigmoid(margins)
            post, w = torch.softmax(joint, -1), log_w.exp()
            g_margins = post * torch.sigmoid(-margins) * (-1.0 / n)
            g_log_w = post.sum(0) * (-1.0 / n) + self.alpha * w * (log_w + 1)
            self.gv.copy_(g_log_w - w * g_log_w.sum())
            loss = -torch.logsumexp(joint, -1).mean() + self.alpha * (w * log_w).sum() if want_loss else None
        else:
            g_margins = torch.sigmoid(-margins).mul_(-1.0 / n)
            loss = -F.logsigmoid(margins).mean(0).sum() + 0.5 * self.l2 * self.w.pow(2).sum() if want_loss else None
        torch.mm(d.T, g_margins, out=self.gw)
        if self.l2:
            self.gw.add_(self.w, alpha=self.l2)
        self.opt.step(lr)
        return None if loss is None else float(loss)

    @torch.no_grad()
    def outputs(self, lo: int, hi: int, d: torch.Tensor, table: torch.Tensor | None, inverse: torch.Tensor | None,
                users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        margins = d @ (self.w + self.prior)
        return self.log_weights().expand_as(margins).unsqueeze(0), margins.unsqueeze(0)

    def snapshot(self, r: int) -> list[torch.Tensor]:
        return [self.w.clone(), self.v.clone()]

    def keep(self, rows: list[int]) -> None:
        pass

    def to_model(self, weights: list[torch.Tensor]) -> MixtureRewardModel:
        with torch.no_grad():
            self.model.heads.copy_(weights[0].T)
            if self.model.static_logits is not None:
                self.model.static_logits.copy_(weights[1])
        return self.model
