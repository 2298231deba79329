"""Per-attribute BT heads fitted on labelled pairs: `budget-bt`, `oracle`, and the MAP solver that
`micro-refine` shares.

A BT head w scores a pair by w . d with d = e_chosen - e_rejected (no intercept). Its loss on a pair,
softplus(-w . d), is the logistic loss of d with label 1 and of -d with label 0, so fitting on the
difference vectors IS L2-regularised logistic regression with symmetric augmentation, without
materialising the mirrored copies.

Small budgets (B pairs, B << d) are solved exactly in the span of the pairs (representer theorem): with
G = D D^T = U diag(e) U^T, margins are Z b with Z = U diag(sqrt(e)) and ||w||^2 = ||b||^2, so Newton runs
in at most B dimensions for any hidden size, batched over attributes x seeds x grid values. The prior
precision is chosen per attribute by approximate leave-one-out BT loss on its budget pairs (every
candidate fitted once; docs/decisions.md has the rules it was measured against).

Units: lambda = c * mean_i ||d_i||^2, so c is the inverse variance of a prior margin w . d and the grid
does not depend on the embedding scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn



@dataclass
class MapHeads:
    """Solution of `fit_map_heads` for P problems."""

    delta: torch.Tensor  # [P, d] the fitted head (budget-bt) or the correction added to the prior (refine)
    scale: torch.Tensor  # [P] the fitted multiplier s of the prior margins (0 when there is no prior)
    precision: torch.Tensor  # [P] the chosen c (prior precision in units of 1 / mean ||d||^2)
    heldout_loss: torch.Tensor  # [P, L] held-out BT loss per pair for each candidate (fit_map_heads' order)


#: Prior precision of the "prior alone" candidate of micro-refine: delta is pinned at 0.
PRIOR_ONLY = 1e12
#: micro-refine leaves its prior alone unless the best candidate's leave-one-out loss is lower by this many SE
KEEP_PRIOR_SE = 1.0


def _span_features(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, to_coef) with margins = z @ b and pair coefficients = to_coef @ b (w = D^T coef)."""
    # numpy's batched eigh: torch.linalg.eigh on CPU was ~80x slower here (2.7 s vs 35 ms for 9 x 100^2)
    evals, evecs = (torch.from_numpy(a) for a in np.linalg.eigh(gram.numpy()))
    evals = evals.clamp_min(0.0)
    keep = evals > evals.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-9
    root = torch.where(keep, evals.sqrt(), torch.zeros_like(evals))
    inv = torch.where(keep, 1.0 / root.clamp_min(1e-300), torch.zeros_like(root))
    return evecs * root.unsqueeze(-2), evecs * inv.unsqueeze(-2)


def _newton(x: torch.Tensor, prec: torch.Tensor, mean: torch.Tensor, iterations: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_theta sum_i w_i softplus(-x_i . theta) + 1/2 sum_j prec_j (theta_j - mean_j)^2, batched over
    the leading axis (x [N, n, m], weight [N, n], default 1); Newton with a best-of-4 step length (logistic
    Newton can overshoot on nearly separable pairs)."""
    w = torch.ones(x.shape[:2], dtype=x.dtype) if weight is None else weight
    theta = mean.clone()
    steps = torch.tensor([1.0, 0.5, 0.25, 0.0625], dtype=x.dtype)
    xt = x.transpose(1, 2)

    def objective(th):  # [..., N, m] -> [..., N]
        margins = (x @ th.unsqueeze(-1)).squeeze(-1)
        return (w * nn.functional.softplus(-margins)).sum(-1) + 0.5 * (prec * (th - mean) ** 2).sum(-1)

    for _ in range(iterations):
        margins = (x @ theta.unsqueeze(-1)).squeeze(-1)
        p = torch.sigmoid(-margins)  # -d loss / d margin
        grad = -(xt @ (w * p).unsqueeze(-1)).squeeze(-1) + prec * (theta - mean)
        hess = (xt * (w * p * (1 - p)).unsqueeze(1)) @ x + torch.diag_embed(prec)
        step = torch.cholesky_solve(grad.unsqueeze(-1), torch.linalg.cholesky(hess)).squeeze(-1)  # hess is SPD
        cand = theta.unsqueeze(0) - steps[:, None, None] * step.unsqueeze(0)  # [4, N, m]
        best = torch.stack([objective(c) for c in cand]).argmin(0)
        theta = cand[best, torch.arange(theta.shape[0])]
        if float(step.abs().max()) < 1e-6 * (1.0 + float(theta.abs().max())):
            break
    return theta


def _alo_pair_loss(x: torch.Tensor, theta: torch.Tensor, prec: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Approximate leave-one-out BT loss of every pair ([L, P, n]) of the MAP fits theta [L, P, m] on
    x [P, n, m] with prior precisions prec [L, P, m] and pair weights weight [P, n] in {0, 1} (one Newton
    step from the full fit, exact for a quadratic loss): with l_i = softplus(-m_i), p_i = sigmoid(-m_i),
    v_i = w_i p_i (1 - p_i), H the Hessian of the full objective and h_i = x_i^T H^-1 x_i, Sherman-Morrison
    gives the margin without pair i as m_i - p_i h_i / (1 - v_i h_i) (v_i h_i < 1 since
    H >= v_i x_i x_i^T + diag(prec)); a pair of weight 0 is not in the fit, so its loss is already held out."""
    margins = (x.unsqueeze(0) @ theta.unsqueeze(-1)).squeeze(-1)  # [L, P, n]
    p = torch.sigmoid(-margins)
    v = weight * p * (1 - p)
    xt = x.transpose(1, 2).unsqueeze(0)  # [1, P, m, n]
    hess = (xt * v.unsqueeze(-2)) @ x.unsqueeze(0) + torch.diag_embed(prec)  # [L, P, m, m]
    solved = torch.cholesky_solve(xt.expand(hess.shape[0], -1, -1, -1), torch.linalg.cholesky(hess))  # H^-1 x_i
    h = (xt * solved).sum(-2)  # [L, P, n]
    return nn.functional.softplus(-(margins - p * h / (1 - v * h)))


def fit_map_heads(
    diff: torch.Tensor,
    grid: tuple[float, ...],
    *,
    prior_margins: torch.Tensor | None = None,
    scale_precision: float = 1.0,
    allow_drop_prior: bool = True,
    iterations: int = 15,
    fit_on: torch.Tensor | None = None,
) -> MapHeads:
    """MAP BT heads for P independent problems of n pairs each, the prior precision chosen per problem
    by approximate leave-one-out BT loss on the same pairs (`_alo_pair_loss`).

    diff [P, n, d]: the budget pairs' difference vectors. Without `prior_margins` the head is
    w ~ N(0, I / lambda) (budget-bt). With prior_margins [P, n] (the routed stage-1 mixture's margins on
    the same pairs) the margin is s * prior_margin + delta . d with delta ~ N(0, I / lambda) and
    s ~ N(1, 1 / scale_precision) (micro-refine): a prior that the pairs contradict can shrink. With
    `allow_drop_prior` the selection also weighs the grid with the prior switched off (s = 0: the
    budget-bt head). The best candidate replaces "the prior alone" only if its held-out loss is lower by
    KEEP_PRIOR_SE standard errors of the per-pair differences. `fit_on` [P, n] bool (default: all): the
    pairs each problem is fitted and chosen on. A problem with fewer than 2 of them keeps the first
    candidate. Computed in float64; returns float32 tensors on the CPU.
    """
    diff = diff.detach().to("cpu", torch.float64)
    n_problems, n, _ = diff.shape
    gram = diff @ diff.transpose(1, 2)  # [P, n, n]
    with_prior = prior_margins is not None
    prior = prior_margins.detach().to("cpu", torch.float64) if with_prior else None
    on = torch.ones(n_problems, n, dtype=torch.float64) if fit_on is None else fit_on.detach().to("cpu", torch.float64)
    if on.shape != (n_problems, n):
        raise ValueError(f"fit_on must be [problems, pairs] = {[n_problems, n]}, not {list(on.shape)}")
    n_on = on.sum(-1)  # [P]
    norms = gram.diagonal(dim1=1, dim2=2)
    masked_mean = (norms * on).sum(-1) / n_on.clamp_min(1)
    unit = torch.where((n_on == n) | (n_on == 0), norms.mean(-1), masked_mean).clamp_min(1e-30)  # mean ||d||^2 of the fit

    # Candidates in order of preference (ties go to the first): the grid from the largest c down with
    # the prior on (s ~ N(1, 1/scale_precision)), then, if allowed, with the prior off (s = 0).
    desc = sorted(grid, reverse=True)
    cand_c = ([PRIOR_ONLY] if with_prior else []) + desc + (desc if with_prior and allow_drop_prior else [])
    cand_on = [True] * (len(desc) + with_prior) + [False] * (len(cand_c) - len(desc) - with_prior)
    grid_t = torch.tensor(cand_c, dtype=torch.float64)
    n_grid = len(cand_c)
    s_mean_all = torch.tensor([1.0 if on else 0.0 for on in cand_on], dtype=torch.float64)
    s_prec_all = torch.tensor([scale_precision if on else 1e12 for on in cand_on], dtype=torch.float64)

    def solve(rows: torch.Tensor, cands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fit on pairs `rows` for candidate indices `cands` [L', P]; returns (coef [L', P, |rows|],
        s [L', P], theta [L', P, m], x [P, |rows|, m] the span features, prec [L', P, m])."""
        lam = grid_t[cands] * unit[None, :]
        z, to_coef = _span_features(gram[:, rows][:, :, rows])
        cols = [z] + ([prior[:, rows].unsqueeze(-1)] if with_prior else [])
        x = torch.cat(cols, -1)  # [P, r, m]
        m = x.shape[-1]
        n_l = lam.shape[0]
        prec = lam.unsqueeze(-1).expand(-1, -1, m).clone()
        mean = torch.zeros(n_l, n_problems, m, dtype=torch.float64)
        if with_prior:
            prec[..., -1] = s_prec_all[cands]
            mean[..., -1] = s_mean_all[cands]
        xs = x.unsqueeze(0).expand(n_l, -1, -1, -1).reshape(n_l * n_problems, len(rows), m)
        ws = on[:, rows].unsqueeze(0).expand(n_l, -1, -1).reshape(n_l * n_problems, len(rows))
        theta = _newton(xs, prec.reshape(-1, m), mean.reshape(-1, m), iterations, ws).reshape(n_l, n_problems, m)
        b = theta[..., : z.shape[-1]]
        coef = (to_coef.unsqueeze(0) @ b.unsqueeze(-1)).squeeze(-1)  # [L', P, |rows|]
        s = theta[..., -1] if with_prior else torch.zeros(n_l, n_problems, dtype=torch.float64)
        return coef, s, theta, x, prec

    every = torch.arange(n_grid)[:, None].expand(-1, n_problems)  # [L, P]: each candidate for each problem
    pair_loss = torch.zeros(n_grid, n_problems, n, dtype=torch.float64)  # held-out BT loss of every pair
    if n >= 2 and n_grid > 1:  # one pair validates nothing: then the first (preferred) candidate
        _, _, theta, x, prec = solve(torch.arange(n), every)
        pair_loss = _alo_pair_loss(x, theta, prec, on)
    pair_loss = pair_loss * on  # only the pairs in the fit choose
    heldout = pair_loss.sum(-1)  # [L, P]
    choice = heldout.argmin(0)  # [P]; ties: the first candidate
    choice = torch.where(n_on < 2, torch.zeros_like(choice), choice)
    if with_prior:
        # Keep the prior alone (candidate 0: delta = 0, only its scale fitted) unless the best candidate
        # beats it by more than KEEP_PRIOR_SE standard errors of the paired per-pair loss differences.
        # Held-out losses of a few dozen pairs are noisy, and the best of many candidates looks better than
        # it is: on a weak signal the plain minimum moves a head away from a good prior by chance
        # (HelpSteer2, docs/results.md), while a prior that the pairs contradict loses on most pairs
        # and is left.
        rows = torch.arange(n_problems)
        gap = pair_loss[0] - pair_loss[choice, rows]  # [P, n], 0 off the fit
        mean_gap = gap.sum(-1) / n_on.clamp_min(1)
        var = ((gap - mean_gap.unsqueeze(-1)) ** 2 * on).sum(-1) / (n_on - 1).clamp_min(1)
        se = var.sqrt() * n_on.sqrt()
        choice = torch.where(gap.sum(-1) <= KEEP_PRIOR_SE * se, torch.zeros_like(choice), choice)
    coef, s, *_ = solve(torch.arange(n), choice.unsqueeze(0))
    delta = (coef[0].unsqueeze(1) @ diff).squeeze(1)  # [P, d]
    return MapHeads(
        delta=delta.float(),
        scale=s[0].float(),
        precision=grid_t[choice].float(),
        heldout_loss=(heldout / n_on.clamp_min(1)).T.float(),
    )


def fit_budget_bt(diff: torch.Tensor, grid: tuple[float, ...]) -> MapHeads:
    """`budget-bt`: a fresh BT head per problem from its budget pairs alone ([P, n, d] -> heads [P, d])."""
    return fit_map_heads(diff, grid)


def fit_oracle_head(diff: torch.Tensor, grid: tuple[float, ...], *, holdout: float = 0.2, seed: int = 0, max_iter: int = 50) -> tuple[torch.Tensor, float]:
    """`oracle`: a BT head on ALL of an attribute's training pairs ([n, d] -> ([d], chosen c)).

    c is chosen by the BT loss on a seeded hold-out of `holdout` of the pairs, every grid value fitted at
    once (their objectives are separable, so one L-BFGS over the stacked heads solves them all); the
    chosen head is then refitted on all pairs from that solution.
    """
    diff = diff.detach().float()
    n, d = diff.shape
    unit = float(diff.pow(2).sum(1).mean().clamp_min(1e-30))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = int(round(holdout * n)) if n >= 10 else 0
    lam = torch.tensor(grid, dtype=torch.float32) * unit

    def fit(train: torch.Tensor, lams: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        w = init.clone()
        opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
        scale = 1.0 / max(1, train.shape[0])

        def closure():  # the loss and its gradient by hand: autograd's backward reads `train` in its slow layout
            margins = train @ w.T  # [n, heads]
            loss = (nn.functional.softplus(-margins).sum(0) + 0.5 * lams * w.pow(2).sum(1)).sum() * scale
            w.grad = (lams[:, None] * w - torch.sigmoid(-margins).T @ train) * scale
            return loss

        opt.step(closure)
        return w

    if n_out == 0 or len(grid) == 1:
        c = grid[0] if len(grid) == 1 else sorted(grid)[len(grid) // 2]
        return fit(diff, lam[:1] * 0 + c * unit, torch.zeros(1, d))[0], float(c)
    held, train = diff[order[:n_out]], diff[order[n_out:]]
    heads = fit(train, lam, torch.zeros(len(grid), d))
    held_loss = nn.functional.softplus(-(held @ heads.T)).mean(0)
    best = int(held_loss.argmin())
    head = fit(diff, lam[best : best + 1], heads[best : best + 1])[0]
    return head, float(grid[best])
