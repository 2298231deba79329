"""Stage 2 (paper eq. 6, Algorithm 1): adapt the router to user contexts with Hedge soft labels.

For a budget pair i and frozen stage-1 head k, L_ik = -log sigmoid(r_k(w) - r_k(l)). The soft label is
the Hedge / mirror-descent step from the router's current prediction f(x_i, c_i):

    w_ik ∝ f(x_i, c_i)_k exp(-L_ik / tau)            (eq. 6)

computed in log space, log_softmax(log f - L / tau), so it stays finite at tau = 1e-4 and huge losses.
The router (a copy of stage 1's, fed the (context + prompt) embedding) is trained by cross-entropy to
these labels; they are recomputed once at the start of each epoch and fixed during it (B.1).

Heads are frozen, so the losses are computed once. Several independent routers (one per seed) train
at once as a stack: their parameters are stacked along a leading axis and every matmul is batched.
AdamW is elementwise, so one optimiser over the stack is exactly one optimiser per router.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..heads.model import Router


def head_losses(margins: torch.Tensor) -> torch.Tensor:
    """L_ik = -log sigmoid(margin_ik): each frozen head's BT loss on each pair ([..., K])."""
    return nn.functional.softplus(-margins)


def soft_labels(log_prior: torch.Tensor, losses: torch.Tensor, tau: float) -> torch.Tensor:
    """Log of the eq. 6 targets: log_softmax(log f - L / tau) over heads ([..., K]).

    tau = 0 is the limit: all weight on the lowest-loss head(s) the prior allows (ties share by prior);
    tau = inf keeps the prior.
    """
    if tau == float("inf"):
        return torch.log_softmax(log_prior, dim=-1)
    if tau == 0:
        best = losses.masked_fill(~torch.isfinite(log_prior), float("inf")).min(dim=-1, keepdim=True).values
        keep = losses <= best
        return torch.log_softmax(log_prior.masked_fill(~keep, float("-inf")), dim=-1)
    # Subtracting the per-pair minimum loss changes nothing (softmax is shift-invariant) and keeps the
    # largest exponent at 0 before the division, so nothing overflows even for L / tau ~ 1e6.
    scaled = (losses - losses.min(dim=-1, keepdim=True).values) / tau
    return torch.log_softmax(log_prior - scaled, dim=-1)


def context_log_weights(losses: torch.Tensor, rate: float) -> torch.Tensor:
    """Hedge over one context's budget pairs: [..., B, K] frozen-head BT losses -> [..., K] log-weights.

    Added to the router's logits, the context's routing becomes f(x, c)_k exp(-eta sum_i L_ik) / Z
    (hedge_log_weights on the summed losses). Masked heads (infinite losses) get -inf.
    """
    finite = torch.isfinite(losses).all(dim=-2)  # [..., K] heads with a loss on every pair
    total = losses.masked_fill(~torch.isfinite(losses), 0.0).sum(dim=-2)
    return hedge_log_weights(total.masked_fill(~finite, float("inf")), losses.shape[-2], rate)


def hedge_log_weights(total: torch.Tensor, pairs: int, rate: float) -> torch.Tensor:
    """Hedge log-weights from each head's summed BT loss over a user's `pairs` pairs ([..., K] -> [..., K]).

    Hedge (Freund & Schapire) weights head k by exp(-eta * total_k), eta = rate * sqrt(8 ln K / pairs)
    (rate 0: none, the paper's micro). The state is (total, pairs), so an online user who sends pairs one
    at a time gets exactly the batch weights, in any order. Infinite totals (masked heads) get -inf; the
    best head gets 0.
    """
    finite = torch.isfinite(total)
    heads = finite.sum(dim=-1, keepdim=True).clamp_min(1).to(total.dtype)
    eta = rate * torch.sqrt(8.0 * torch.log(heads) / max(int(pairs), 1))
    total = total - total.masked_fill(~finite, float("inf")).min(dim=-1, keepdim=True).values
    return (-eta * total.masked_fill(~finite, 0.0)).masked_fill(~finite, float("-inf"))


class StackedRouter(nn.Module):
    """R independent copies of a `Router` (MLP or linear) evaluated with batched matmuls.

    forward(x [R, n, d]) -> logits [R, n, K]; `unstack(r)` returns router r as a plain `Router`.
    """

    def __init__(self, router: Router, copies: int):
        super().__init__()
        self.template = copy.deepcopy(router).cpu()
        linears = [m for m in router.net if isinstance(m, nn.Linear)]
        self.weights = nn.ParameterList(
            nn.Parameter(m.weight.detach().T.unsqueeze(0).repeat(copies, 1, 1).contiguous()) for m in linears
        )  # each [R, in, out]
        self.biases = nn.ParameterList(nn.Parameter(m.bias.detach().unsqueeze(0).repeat(copies, 1).contiguous()) for m in linears)
        self.copies = copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < last:
                h = torch.relu(h)
        return h

    def unstack(self, r: int) -> Router:
        router = copy.deepcopy(self.template)
        linears = [m for m in router.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for m, w, b in zip(linears, self.weights, self.biases):
                m.weight.copy_(w[r].T.cpu())
                m.bias.copy_(b[r].cpu())
        return router.eval()


def adapt_routers(
    router: Router,
    inputs: torch.Tensor,
    losses: torch.Tensor,
    seeds: list[int],
    *,
    tau: float,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-2,
    history: list | None = None,
) -> list[Router]:
    """Algorithm 1 for R routers at once, each initialised from `router` (stage 1).

    inputs [R, n, d]: router r's (context + prompt) embeddings of its n budget pairs;
    losses [R, n, K]: the frozen heads' BT losses on them; seeds[r] orders router r's batches.
    `history`, if a list, receives per epoch the mean cross-entropy and the mean entropy of the labels.
    Runs `epochs` epochs. Returns R trained `Router`s (CPU, eval mode).
    """
    copies, n, _ = inputs.shape
    if len(seeds) != copies or losses.shape[:2] != (copies, n):
        raise ValueError("inputs, losses and seeds must agree on the number of routers and pairs")
    device = inputs.device
    stack = StackedRouter(router, copies).to(device)
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    try:
        opt = torch.optim.AdamW(stack.parameters(), lr=lr, weight_decay=0.0, **fused)
    except (RuntimeError, TypeError):  # older torch without a fused CPU kernel
        opt = torch.optim.AdamW(stack.parameters(), lr=lr, weight_decay=0.0)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    rows = torch.arange(copies, device=device).unsqueeze(1)
    for _ in range(epochs):
        with torch.no_grad():  # omega_i: the router's current prediction, fixed for the epoch (B.1)
            target = soft_labels(torch.log_softmax(stack(inputs), dim=-1), losses, tau).exp()
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # [R, n]
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            logp = torch.log_softmax(stack(inputs[rows, idx]), dim=-1)
            # Sum over routers of each router's mean CE: the gradients stay independent per router.
            loss = -(target[rows, idx] * logp).sum(-1).mean(-1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[1]
        if history is not None:
            ent = -(target * target.clamp_min(1e-30).log()).sum(-1).mean()
            history.append({"cross_entropy": total / (n * copies), "label_entropy": float(ent)})
    return [stack.unstack(r) for r in range(copies)]
