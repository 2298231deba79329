"""Stage-1 objectives (paper eq. 3-5) and the baselines' losses, as plain functions of tensors."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mixture_nll(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Eq. 3: -mean_i log sum_k f_k(x_i) sigmoid(margin_ik), computed in log space (never underflows)."""
    return -torch.logsumexp(log_weights + F.logsigmoid(margins), dim=-1).mean()


def weight_regulariser(log_weights: torch.Tensor, balance: str = "example") -> torch.Tensor:
    """Negative entropy of the mixture weights; adding alpha times it pushes towards uniform use of heads.

    'example' (eq. 4): mean_i sum_k f_ik log f_ik -- every example's weights are pushed to uniform.
    'batch': sum_k fbar_k log fbar_k with fbar the batch mean -- heads are used evenly overall, while each
    example's weights may stay peaked.
    """
    if balance == "example":
        return (log_weights.exp() * log_weights).sum(-1).mean()
    if balance == "batch":
        log_fbar = torch.logsumexp(log_weights, dim=0) - torch.log(torch.tensor(float(log_weights.shape[0])))
        return (log_fbar.exp() * log_fbar).sum()
    raise ValueError(f"balance must be 'example' or 'batch', not {balance!r}")


def per_head_bt(margins: torch.Tensor) -> torch.Tensor:
    """Sum over heads of each head's mean BT loss -log sigmoid(margin): K independent BT problems
    (the single head, and the shared-base ensemble's uniform sum)."""
    return -F.logsigmoid(margins).mean(0).sum()
