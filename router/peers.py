"""The field's other personalization methods, scored by `micro adapt` on the same budget and test pairs.

`drm` -- Decomposed Reward Models (Luo et al., 2025, "Rethinking Diverse Human Preference Learning
through Principal Component Analysis"). Heads are the principal directions of the centred training
difference embeddings (chosen - rejected), each used with both signs; a user's weights come from the
user's few labelled pairs: each head's margins are standardised on those pairs, its BT loss
sum_i -log sigmoid(margin_i) is summed over them, and the heads are weighted by softmax(-loss / T).
As in their code: PCA on the centred differences, the top m components and their negations, T = 1.
Simplified: the cache holds difference vectors, not each response's embedding, so a head's scores
are standardised by dividing the margins by their root mean square on the user's pairs (a response
score's mean cancels in a chosen-minus-rejected margin; its spread is what the division removes).

`lore` -- LoRe, low-rank reward modelling (Bose et al., 2025, "LoRe: Personalizing LLMs via Low-Rank
Reward Modeling"). A shared basis V [d, r] and per-group weights on the simplex (softmax of logits);
a group's margin is d @ V @ softmax(w_g). V and the training groups' logits are fitted jointly by
full-batch Adam on the mean BT loss of the training pairs (so it needs their group labels); a new
user's logits are then fitted on the budget pairs with V frozen. Simplified: difference vectors are
scaled to unit root-mean-square norm, the fits are full-batch with a fixed number of steps and no
regulariser, and a new user's logits start at zero (uniform weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# -- drm ------------------------------------------------------------------------------------------------

def drm_heads(diff: torch.Tensor, components: int) -> torch.Tensor:
    """[2m, d] reward heads: the top m principal directions of the centred rows of `diff` [n, d], then
    their negations (m = min(components, n, d)). A randomized low-rank SVD (`torch.svd_lowrank`, float32,
    m + 30 directions, 10 power iterations; it matches the full float64 SVD's directions, a test checks) where
    the matrix is much larger than m; the full SVD otherwise."""
    x = diff.float()
    x = x - x.mean(0)
    m = max(1, min(components, x.shape[0], x.shape[1]))
    if min(x.shape) > 4 * (m + 30):
        with torch.random.fork_rng(devices=[]):  # its random start, seeded: the same heads every run
            torch.manual_seed(0)
            _, _, v = torch.svd_lowrank(x, q=m + 30, niter=10)
        top = v[:, :m].T
    else:
        top = torch.linalg.svd(x.double(), full_matrices=False)[2][:m]
    top = top.to(diff.dtype)
    return torch.cat([top, -top])


def drm_weights(margins: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [..., H], scale [..., H]) of the heads from their margins on a user's labelled pairs
    ([..., B, H], chosen first): margins / scale are the standardised margins (scale = their root mean
    square over the B pairs), loss_h = sum_i -log sigmoid(standardised margin), weights =
    softmax(-loss / temperature)."""
    scale = margins.pow(2).mean(-2).sqrt().clamp_min(1e-12)
    loss = F.softplus(-margins / scale.unsqueeze(-2)).sum(-2)
    return torch.softmax(-loss / temperature, dim=-1), scale


def drm_margins(diff: torch.Tensor, heads: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[n] the user's margin on `diff` [n, d]: sum_h weights_h * (diff @ head_h) / scale_h."""
    return (diff @ heads.T / scale) @ weights


# -- lore -----------------------------------------------------------------------------------------------

@dataclass
class LoreBasis:
    """A fitted LoRe model: basis [d, r], the training groups' logits [G, r], and the input scale."""

    basis: torch.Tensor
    logits: torch.Tensor
    scale: float

    def margins(self, diff: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """[..., n] margins of `diff` [..., n, d] under weights softmax(logits) ([..., r])."""
        return ((diff / self.scale) @ self.basis @ torch.softmax(logits, -1).unsqueeze(-1)).squeeze(-1)


def unit_rms_scale(diff: torch.Tensor) -> float:
    """sqrt(mean_i ||d_i||^2): dividing by it gives the rows unit root-mean-square norm."""
    return float(diff.double().pow(2).sum(-1).mean().sqrt().clamp_min(1e-12))


def fit_lore(diff: torch.Tensor, groups: torch.Tensor, rank: int, *, steps: int, lr: float, seed: int = 0) -> LoreBasis:
    """Joint full-batch Adam fit of V [d, r] and per-group logits [G, r] on the mean BT loss of the pairs
    `diff` [n, d] labelled by `groups` [n] (ids 0..G-1)."""
    gen = torch.Generator().manual_seed(seed)
    scale = unit_rms_scale(diff)
    x = diff.float() / scale
    g = groups.long()
    n_groups = int(g.max()) + 1
    basis = (torch.randn(x.shape[1], rank, generator=gen) / rank ** 0.5).requires_grad_()
    logits = (0.01 * torch.randn(n_groups, rank, generator=gen)).requires_grad_()
    opt = torch.optim.Adam([basis, logits], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        margins = ((x @ basis) * torch.softmax(logits, -1)[g]).sum(-1)
        F.softplus(-margins).mean().backward()
        opt.step()
    return LoreBasis(basis.detach(), logits.detach(), scale)


def fit_lore_users(model: LoreBasis, diff: torch.Tensor, *, steps: int, lr: float) -> torch.Tensor:
    """[U, r] logits of U new users from their labelled pairs `diff` [U, B, d], the basis frozen (mean BT
    loss per user, full batch, all users at once, starting from uniform weights)."""
    z = (diff.float() / model.scale) @ model.basis  # [U, B, r]
    logits = torch.zeros(diff.shape[0], model.basis.shape[1], requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        margins = (z @ torch.softmax(logits, -1).unsqueeze(-1)).squeeze(-1)
        F.softplus(-margins).mean(-1).sum().backward()
        opt.step()
    return logits.detach()
