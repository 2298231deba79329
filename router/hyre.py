"""HyRe (Lee et al. 2024, "Test-time alignment via hypothesis reweighting"): reweight a fixed set of
heads from a few labelled test pairs of the target user/attribute.

w_k ∝ exp(-sum_i L_ik), with L_ik the BT loss of head k on shot i: the Bayesian posterior over heads
under a uniform prior when the user's preferences follow one head.
The weights are one vector per attribute (no router), applied to every remaining test pair.
"""

from __future__ import annotations

import torch

from .hedge import head_losses


def hyre_weights(shot_margins: torch.Tensor) -> torch.Tensor:
    """[K] head weights from the heads' margins on the labelled shots [n_shots, K] (chosen minus rejected)."""
    if shot_margins.ndim != 2:
        raise ValueError(f"shot margins must be [n_shots, K], got {tuple(shot_margins.shape)}")
    k = shot_margins.shape[1]
    if shot_margins.shape[0] == 0:
        return torch.full((k,), 1.0 / k, dtype=shot_margins.dtype)
    return torch.softmax(-head_losses(shot_margins.double()).sum(0), dim=0).to(shot_margins.dtype)


def hyre_margins(head_margins: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n] reweighted margins sum_k w_k m_k of the test pairs' per-head margins [n, K]."""
    return head_margins @ weights
