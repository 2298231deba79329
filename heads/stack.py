"""The engine that trains `micro` models: `MicroStack`, many models side by side with a hand-written
gradient (the tests check it against autograd on heads/losses.py), and `FlatAdamW`, its optimiser. It takes
one AdamW step on a batch of difference vectors and router inputs and gives each model's held-out log
weights and margins; heads/train.py drives it (and heads/baselines.py's trainer the same way).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .config import MixtureConfig
from .model import MixtureRewardModel

#: with users, the router's logits are its last bias alone (its last weights stay 0): f(g) = softmax(b + u_g), the
#: same for every prompt; True: softmax(router(x) + u_g). Measured in docs/users.md (benchmarks/users.py)
USERS_READ_PROMPT = False
#: the user logits train as USER_SCALE * v: Adam moves v by about lr a step, so a bare logit vector would move
#: far slower than the router's logits (a sum over its hidden units); docs/users.md has 1 against 10
USER_SCALE = 10.0


class FlatAdamW:
    """AdamW (no weight decay) over one flat buffer that every parameter is a view of: one fused kernel call
    per step, without the Python overhead of `torch.optim` around it (the tests compare it with torch's)."""

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, state: dict | None = None):
        self.flat, self.grad = flat, grad
        state = state or {}
        self.exp_avg = state.get("exp_avg", torch.zeros_like(flat))
        self.exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(flat))
        self.steps = state.get("step", torch.zeros((), dtype=torch.float32, device=flat.device))

    def step(self, lr: float) -> None:
        self.steps += 1
        torch._fused_adamw_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps], lr=lr,
                            beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    def state(self) -> dict:
        return {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}


class MicroStack:
    """R `micro` models (K heads + router) trained side by side with a hand-written backward.

    Layout (R models, K heads, H router width, d inputs, G users): heads [d, R*K], first router layer [d, R*H]
    (or [d, R*K] for the linear router) + bias, second layer [R, H, K] + bias [R, K], and with users their
    logits [R, G, K] (added to the router's logits of each pair whose user row is >= 0), all views of one
    flat buffer (gradients likewise). Every pair-level product is one matmul over all models; model r's
    loss depends on its own slice only, and AdamW is elementwise, so the stack is exactly R independent
    fits on the same batches. A [R, B] mask lets each model skip some pairs of a batch (its fold)."""

    def __init__(self, models: list[MixtureRewardModel], config: MixtureConfig, device: torch.device, alphas: list[float]):
        self.config, self.k, self.mlp = config, models[0].k, config.router == "mlp"
        linears = [[m for m in model.router.net if isinstance(m, torch.nn.Linear)] for model in models]
        values = [torch.cat([m.heads.detach().T for m in models], 1), torch.cat([ls[0].weight.detach().T for ls in linears], 1),
                  torch.cat([ls[0].bias.detach() for ls in linears])]
        if self.mlp:
            values += [torch.stack([ls[1].weight.detach().T for ls in linears]), torch.stack([ls[1].bias.detach() for ls in linears])]
        # per-user logits [R, G, K] (MixtureConfig.users), the last block
        self.user_slot = len(values) if models[0].user_logits is not None else None
        self.reads_prompt, self.user_scale = self.user_slot is None or USERS_READ_PROMPT, USER_SCALE
        if self.user_slot is not None:
            values.append(torch.stack([m.user_logits.detach() for m in models]) / self.user_scale)
        self.template = models[0]
        self._build([v.to(device, torch.float32) for v in values], None)
        self._set_alphas(alphas)

    def _build(self, values: list[torch.Tensor], state: dict | None) -> None:
        shapes, sizes = [v.shape for v in values], [v.numel() for v in values]
        flat = torch.cat([v.reshape(-1) for v in values])
        grad = torch.zeros_like(flat)
        self.params = [t.view(shape) for t, shape in zip(flat.split(sizes), shapes)]
        self.grads = [t.view(shape) for t, shape in zip(grad.split(sizes), shapes)]
        self.opt = FlatAdamW(flat, grad, state)

    def _set_alphas(self, alphas: list[float]) -> None:
        """Each model's regulariser weight: one number when they share it, else a [R, 1, 1] tensor."""
        self.alphas = list(alphas)
        self.alpha = alphas[0] if len(set(alphas)) == 1 else torch.tensor(alphas, device=self.params[0].device).view(-1, 1, 1)

    @property
    def size(self) -> int:
        return self.params[0].shape[1] // self.k

    def _margins(self, d: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """[R', n, K] head margins of models lo..hi for difference vectors d [n, d]."""
        hi = self.size if hi is None else hi
        return (d @ self.params[0][:, lo * self.k : hi * self.k]).view(d.shape[0], hi - lo, self.k).transpose(0, 1)

    def _logits(self, x: torch.Tensor, lo: int = 0, hi: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(hidden [R', n, H] after ReLU or None, router logits [R', n, K]) of models lo..hi for inputs x [n, d]."""
        hi, n = (self.size if hi is None else hi), x.shape[0]
        if not self.reads_prompt:  # the router's last bias alone
            bias = self.params[4][lo:hi] if self.mlp else self.params[2][lo * self.k : hi * self.k].view(hi - lo, self.k)
            return None, bias.unsqueeze(1).expand(-1, n, -1)
        width = self.params[1].shape[1] // self.size
        first = torch.addmm(self.params[2][lo * width : hi * width], x, self.params[1][:, lo * width : hi * width])
        if not self.mlp:
            return None, first.view(n, hi - lo, self.k).transpose(0, 1)
        hidden = first.clamp_min_(0).view(n, hi - lo, -1).transpose(0, 1)
        return hidden, torch.baddbmm(self.params[4][lo:hi].unsqueeze(1), hidden, self.params[3][lo:hi])

    def _with_users(self, logits: torch.Tensor, users: torch.Tensor | None, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """logits [R', n, K] plus each pair's user logits (models lo..hi; users [n], -1: none)."""
        if users is None or self.user_slot is None:
            return logits
        table = self.params[self.user_slot][lo : self.size if hi is None else hi] * self.user_scale  # [R', G, K]
        offsets = table[:, users.clamp_min(0)]
        if bool((users < 0).any()):
            offsets = offsets * (users >= 0).to(offsets.dtype).view(1, -1, 1)
        return logits + offsets

    def _router(self, x: torch.Tensor, lo: int = 0, hi: int | None = None, users: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(hidden [R', n, H] after ReLU or None, log weights [R', n, K]) of models lo..hi for inputs x [n, d]
        (and user rows `users` [n])."""
        hidden, logits = self._logits(x, lo, hi)
        return hidden, torch.log_softmax(self._with_users(logits, users, lo, hi), dim=-1)

    @torch.no_grad()
    def step(self, d: torch.Tensor, x: torch.Tensor, lr: float, mask: torch.Tensor | None = None, want_loss: bool = False,
             users: torch.Tensor | None = None) -> float | None:
        """One AdamW step of every model on the batch (d [B, d] differences, x [B, d] router inputs; `mask`
        [R, B]: 1 where a model trains on the pair; `users` [B]: each pair's user row, -1 for none). Returns the
        mean batch loss over models with `want_loss`."""
        r, k, n = self.size, self.k, d.shape[0]
        coef = 1.0 / n if mask is None else (mask / mask.sum(1, keepdim=True).clamp_min(1)).unsqueeze(-1)
        margins = self._margins(d)
        hidden, log_w = self._router(x, users=users)
        joint = log_w + F.logsigmoid(margins)
        top = joint.amax(-1, keepdim=True)
        post = (joint - top).exp_()
        total = post.sum(-1, keepdim=True)
        post /= total  # posterior over heads of each pair
        loss = float(-((top + total.log()) * coef).sum()) / r if want_loss else None
        weights = log_w.exp()
        g_log_w = post.mul_(-coef)
        g_margins = g_log_w * torch.sigmoid(margins.neg_())
        if any(self.alphas):
            # batch: alpha * sum_k fbar_k log fbar_k (fbar: the batch-mean weights); example: eq. 4 per pair
            batch = self.config.balance == "batch"
            # (a model whose mask drops the whole batch has fbar 0: clamped, its terms are 0 * finite)
            entropy_log = (weights * coef).sum(1, keepdim=True).clamp_min_(1e-30).log_() if batch else log_w
            if want_loss:
                entropy = entropy_log.exp() * entropy_log if batch else weights * log_w * coef
                loss += float((self.alpha * entropy).sum()) / r
            g_log_w += weights * (entropy_log + 1.0) * (self.alpha * coef)
        g_logits = g_log_w - weights * g_log_w.sum(-1, keepdim=True)
        torch.mm(d.T, g_margins.transpose(0, 1).reshape(n, r * k), out=self.grads[0])
        if not self.reads_prompt:  # only the last bias of the router trains (its other gradients stay 0)
            bias = self.grads[4] if self.mlp else self.grads[2].view(r, k)
            torch.sum(g_logits, 1, out=bias)
        elif self.mlp:
            g_first = torch.bmm(g_logits, self.params[3].transpose(1, 2)).mul_(hidden > 0).transpose(0, 1).reshape(n, -1)
            torch.bmm(hidden.transpose(1, 2), g_logits, out=self.grads[3])
            torch.sum(g_logits, 1, out=self.grads[4])
        else:
            g_first = g_logits.transpose(0, 1).reshape(n, r * k)
        if self.reads_prompt:
            torch.mm(x.T, g_first, out=self.grads[1])
            torch.sum(g_first, 0, out=self.grads[2])
        if self.user_slot is not None:  # each user's logits: the sum of its pairs' logit gradients
            self.grads[self.user_slot].zero_()
            if users is not None:
                known = users >= 0
                self.grads[self.user_slot].index_add_(1, users[known], g_logits[:, known])
                self.grads[self.user_slot].mul_(self.user_scale)
        self.opt.step(lr)
        return loss

    @torch.no_grad()
    def outputs(self, lo: int, hi: int, d: torch.Tensor, table: torch.Tensor, inverse: torch.Tensor,
                users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log weights, margins), each [R', m, K], of models lo..hi on pairs with differences d [m, d],
        router inputs table[inverse] (the router runs once per distinct row) and user rows `users` [m]."""
        if users is None or self.user_slot is None:
            return self._router(table, lo, hi)[1][:, inverse], self._margins(d, lo, hi)
        logits = self._with_users(self._logits(table, lo, hi)[1][:, inverse], users, lo, hi)
        return torch.log_softmax(logits, dim=-1), self._margins(d, lo, hi)

    def _by_model(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a buffer laid out as the parameters, with the models on axis 1 of the first two (heads,
        first router layer: [d, R, .]) and on axis 0 of the rest."""
        parts = flat.split([p.numel() for p in self.params])
        return [t.view(p.shape[0], self.size, -1) if i < 2 else t.view(self.size, -1) if i == 2 else t.view(p.shape)
                for i, (t, p) in enumerate(zip(parts, self.params))]

    def snapshot(self, r: int) -> list[torch.Tensor]:
        """Model r's parameters (cloned)."""
        return [v.select(1 if i < 2 else 0, r).clone() for i, v in enumerate(self._by_model(self.opt.flat))]

    def keep(self, rows: list[int]) -> None:
        """Drop every model but `rows` (which go on in that order); their optimiser state goes on unchanged."""
        idx = torch.tensor(rows, device=self.opt.flat.device)
        take = lambda flat: [v.index_select(1 if i < 2 else 0, idx) for i, v in enumerate(self._by_model(flat))]  # noqa: E731
        shapes = [(p.shape[0], -1) if i < 2 else (-1,) if i == 2 else (len(rows), *p.shape[1:]) for i, p in enumerate(self.params)]
        state = {"step": self.opt.steps, **{n: torch.cat([t.reshape(-1) for t in take(getattr(self.opt, n))]) for n in ("exp_avg", "exp_avg_sq")}}
        alphas = [self.alphas[r] for r in rows]
        self._build([t.reshape(shape) for t, shape in zip(take(self.opt.flat), shapes)], state)
        self._set_alphas(alphas)

    def to_model(self, weights: list[torch.Tensor]) -> MixtureRewardModel:
        """The template model with `weights` (a snapshot) loaded."""
        model = self.template
        linears = [m for m in model.router.net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            model.heads.copy_(weights[0].T)
            linears[0].weight.copy_(weights[1].T)
            linears[0].bias.copy_(weights[2].reshape(-1))
            if self.mlp:
                linears[1].weight.copy_(weights[3].T)
                linears[1].bias.copy_(weights[4])
            if self.user_slot is not None:
                model.user_logits.copy_(weights[self.user_slot] * self.user_scale)
        return model
