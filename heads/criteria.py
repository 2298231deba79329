"""The held-out values stage 1 stops on and selects by, per pair, and the paired z that compares two of them.

Two values are watched (the "later plateau" of heads/train.py): the mixture NLL, and the calibrated NLL
(the mixture NLL after the one temperature that fits the held-out pairs best, so over-confident margins
that still rank well are not counted as worse). Candidates are selected by the calibrated NLL.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

#: the values watched by early stopping, in order; the last one selects among candidates
CRITERIA = ("nll", "calibrated-nll")

# Margin scales 1/T tried by the calibrated NLL: 2^(j/4) for j in -40..40 (1/1024 to 1024, 19 % apart).
CALIBRATION_SCALES = 2.0 ** (torch.arange(-40, 41, dtype=torch.float64) / 4)


def _nll_at(w: torch.Tensor, m: torch.Tensor, log_weights: torch.Tensor, scale, buf: torch.Tensor) -> torch.Tensor:
    """[...] -mean log sum_k w_k sigmoid(scale m_k) (scale: a number or [..., 1, 1]), through `buf`; in log
    space where some pair's probability underflows to 0."""
    torch.mul(m, scale, out=buf)
    torch.sigmoid(buf, out=buf)
    nll = -buf.mul_(w).sum(-1).log_().mean(-1)
    if not bool(torch.isfinite(nll).all()):
        nll = -torch.logsumexp(log_weights.double() + F.logsigmoid(scale * m), dim=-1).mean(-1)
    return nll


def best_scale(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[R] the scale of `CALIBRATION_SCALES` with the lowest mixture NLL for each of R models ([R, n, K]
    inputs): every 4th scale first, then the 7 around each model's best (28 of the 81 evaluated; the tests
    compare it with the whole grid)."""
    w, m = log_weights.double().exp(), margins.double()
    buf, coarse = torch.empty_like(m), list(range(0, len(CALIBRATION_SCALES), 4))
    values = torch.stack([_nll_at(w, m, log_weights, float(CALIBRATION_SCALES[j]), buf) for j in coarse])
    centre = torch.tensor(coarse)[values.argmin(0)]
    fine = (centre + torch.arange(-3, 4).view(-1, 1)).clamp(0, len(CALIBRATION_SCALES) - 1)  # [7, R]
    values = torch.stack([_nll_at(w, m, log_weights, CALIBRATION_SCALES[row].view(-1, 1, 1), buf) for row in fine])
    return CALIBRATION_SCALES[fine.gather(0, values.argmin(0, keepdim=True))[0]]


def mixture_pair_nll(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """[..., n] each pair's -log sum_k w_k sigmoid(m_k); log_weights, margins: [..., n, K]."""
    return -torch.logsumexp(log_weights + F.logsigmoid(margins), dim=-1)


def pair_values(log_weights: torch.Tensor, margins: torch.Tensor, mixture: bool = True) -> torch.Tensor:
    """[2, R, n] each pair's share of the two `CRITERIA` for R models (log_weights, margins: [R, n, K]);
    their means are the criteria's values. The calibrated row uses each model's best scale.
    `mixture=False` (single head, ensemble): both rows are the mean per-head BT loss."""
    if not mixture:
        per_head = -F.logsigmoid(margins.double()).mean(-1)
        return torch.stack([per_head, per_head])
    lw, m = log_weights.double(), margins.double()
    scale = best_scale(lw, m).view(-1, 1, 1)
    return torch.stack([mixture_pair_nll(lw, m), mixture_pair_nll(lw, scale * m)])


def paired_z(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """How many standard errors of the per-pair difference `ours` lies below `theirs` (per-pair values on
    the same pairs; positive: ours lower). +-inf for a difference without spread, 0 for none."""
    diff = (theirs - ours).double()
    mean = float(diff.mean())
    se = float(diff.std()) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    if se > 0:
        return mean / se
    return math.copysign(math.inf, mean) if mean else 0.0


def recorded_z(z: float | None) -> float | None:
    """A paired z as the fit record keeps it: finite (clipped to +-1e6, for metrics.json), 3 decimals."""
    return None if z is None else round(max(-1e6, min(1e6, z)), 3)
