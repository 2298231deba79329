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
regulariser, and a new user's logits start at zero (uniform weights). `fit_lore_unseen` is LoRe's
unseen-user protocol: the groups are dealt into folds and each is scored by a basis learned on the other
folds' pairs only; `fit_lore` alone (every training group, the scored ones included) is the "seen" variant.
Where d is large the basis is fitted in a subspace (`lore_subspace`, then the groups' gradients), about 20x
cheaper at 18.8K x 3072 for the same accuracy (docs/peers.md has the measurements and every deviation).
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
    return float(torch.linalg.vector_norm(diff.float(), dim=-1).double().pow(2).mean().sqrt().clamp_min(1e-12))


def lore_subspace(x: torch.Tensor, groups: torch.Tensor, components: int, *, seed: int = 0) -> torch.Tensor | None:
    """[d, q] orthonormal columns spanning the top `components` right singular vectors of the UNCENTRED rows
    `x` [n, d] (a seeded `torch.svd_lowrank`, float32, 2 power iterations) and each group's mean row (the
    group ids in `groups` [n]), or None where that leaves no smaller space (q >= d / 2).

    Why it holds LoRe's fit: a group's BT direction is about Sigma^-1 m_g (Sigma the second moment of the rows,
    m_g the group's mean row); where Sigma's spectrum is flat beyond the kept directions, Sigma^-1 m_g lies in
    the span of those directions and m_g. The singular vectors alone miss the groups on isotropic rows (the
    planted caches: a label only flips a row's sign, which x^T x cannot see); the means carry them."""
    d = x.shape[1]
    ids = torch.unique(groups)
    q = min(components, x.shape[0], d)
    if q + len(ids) >= d // 2:
        return None
    with torch.random.fork_rng(devices=[]):  # its random start, seeded: the same space every run
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(x.float(), q=q, niter=2)
    member = (groups[:, None] == ids[None, :]).float()  # [n, G]
    return _extend(v, ((member / member.sum(0)).T @ x.float()).T)  # the group means: a mean inside the span adds nothing


def fit_lore(diff: torch.Tensor, groups: torch.Tensor, rank: int, *, steps: int, lr: float, seed: int = 0,
             project: int | None = 128, rounds: int = 1) -> LoreBasis:
    """Joint full-batch Adam fit of V [d, r] and per-group logits [G, r] on the mean BT loss of the pairs
    `diff` [n, d] labelled by `groups` [n] (ids 0..G-1).

    `project` = q: the fit runs in a subspace P [d, q'] (`lore_subspace`: the top q uncentred singular
    directions and the group means), V = P V', so each Adam step reads [n, q'] instead of [n, d]; then, `rounds`
    times, the subspace takes in each group's full-space gradient at the fit (sum_i sigmoid(-margin_i) d_i over
    the group's pairs, the direction the full fit would still move in) and the fit goes on from where it was for
    `steps` more steps. The subspace's coordinates are scaled by sqrt(d / q') so that an Adam step moves V as
    far as it does in the full space (Adam moves every coordinate by about lr). V starts from the projection of
    the full fit's random start. None (or a subspace not much smaller than d): the plain fit in the full space."""
    gen = torch.Generator().manual_seed(seed)
    scale = unit_rms_scale(diff)
    x = diff.float() / scale
    g = groups.long()
    n_groups = int(g.max()) + 1
    basis = torch.randn(x.shape[1], rank, generator=gen) / rank ** 0.5
    logits = 0.01 * torch.randn(n_groups, rank, generator=gen)
    space = lore_subspace(x, g, project, seed=seed) if project else None
    if space is None:
        basis, logits = _adam_lore(x, g, basis, logits, steps, lr)
        return LoreBasis(basis, logits, scale)
    ids = torch.unique(g)
    for r in range(rounds + 1):
        if r:  # each group's full-space gradient at the fit, the part the subspace lacks
            margins = ((x @ basis) * torch.softmax(logits, -1)[g]).sum(-1)
            weights = torch.sigmoid(-margins)[:, None] * (g[:, None] == ids[None, :])  # [n, G]
            space = _extend(space, (weights.T @ x).T)
        c = (x.shape[1] / space.shape[1]) ** 0.5
        inner, logits = _adam_lore(x @ space * c, g, space.T @ basis / c, logits, steps, lr)
        basis = space @ inner * c
    return LoreBasis(basis, logits, scale)


def _adam_lore(x: torch.Tensor, g: torch.Tensor, basis: torch.Tensor, logits: torch.Tensor, steps: int,
               lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` full-batch Adam steps on the mean BT loss of margins (x @ basis) . softmax(logits)[g]."""
    basis, logits = basis.clone(), logits.clone()
    opt = torch.optim.Adam([basis, logits], lr=lr)
    member = F.one_hot(g, logits.shape[0]).float()  # [n, G]
    for _ in range(steps):
        basis.grad, logits.grad = lore_gradients(x, member, basis, logits)
        opt.step()
    return basis, logits


def lore_gradients(x: torch.Tensor, member: torch.Tensor, basis: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of the mean BT loss of margins_i = (x_i @ basis) . softmax(logits)[group of i] with respect
    to basis [q, r] and logits [G, r] (`member` [n, G] one-hot groups), by hand: about 3x faster per step than autograd,
    whose backward multiplies by x [n, q] in its slow transposed layout (a test checks them against autograd)."""
    w = torch.softmax(logits, -1)  # [G, r]
    z = x @ basis.T.contiguous().T  # [n, r]; this layout of the skinny factor takes BLAS's fast path (2x)
    wg = member @ w  # [n, r]
    s = torch.sigmoid(-(z * wg).sum(-1)).neg_().div_(x.shape[0])[:, None]  # dL/dmargin [n, 1]
    dw = member.T @ (s * z)  # [G, r]
    return ((s * wg).T @ x).T, w * (dw - (dw * w).sum(-1, keepdim=True))


def _extend(space: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """[d, q + k] orthonormal: `space` [d, q] (orthonormal) and the parts of the columns of `new` [d, k] outside it."""
    if new.shape[1] == 0:
        return space
    for _ in range(2):  # twice: the second pass removes what rounding left in the span
        new = new - space @ (space.T @ new)
    q, r = torch.linalg.qr(new)
    keep = r.diagonal().abs() > 1e-6 * new.norm(dim=0).max().clamp_min(1e-30)
    return torch.cat([space, q[:, keep]], 1)


def fit_lore_unseen(diff: torch.Tensor, groups: torch.Tensor, rank: int, *, steps: int, lr: float, seed: int,
                    folds: int = 2) -> tuple[list[LoreBasis], torch.Tensor]:
    """LoRe's unseen-user protocol: (bases, basis_of). The groups present in `groups` [n] are dealt into
    min(folds, groups) disjoint sets in a seeded random order; basis f is `fit_lore` on the pairs of every
    group NOT in set f (its scale and projection too), so basis_of[g] = f, the basis that scores group g,
    never saw g's pairs. basis_of has one entry per id 0..max(groups); an id with no pairs (seen by no
    basis) gets basis 0."""
    g = groups.long()
    ids = torch.unique(g)
    if len(ids) < 2 or folds < 2:
        raise ValueError(f"lore's unseen-user protocol needs at least 2 groups and 2 folds (it has {len(ids)} "
                         f"group(s), folds={folds}): each basis is learned on the groups it does not score.")
    folds = min(folds, len(ids))
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    basis_of = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
    basis_of[order] = torch.arange(len(order)) % folds
    bases = []
    for f in range(folds):
        rows = torch.nonzero(basis_of[g] != f).flatten()
        bases.append(fit_lore(diff[rows], g[rows], rank, steps=steps, lr=lr, seed=seed))
    return bases, basis_of


def fit_lore_users(model: LoreBasis, diff: torch.Tensor, *, steps: int, lr: float) -> torch.Tensor:
    """[U, r] logits of U new users from their labelled pairs `diff` [U, B, d], the basis frozen (mean BT
    loss per user, full batch, all users at once, starting from uniform weights)."""
    z = (diff.float() / model.scale) @ model.basis  # [U, B, r]
    logits = torch.zeros(diff.shape[0], model.basis.shape[1])
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        logits.grad = lore_user_gradient(z, logits)
        opt.step()
    return logits


def lore_user_gradient(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[U, r] gradient of sum_u mean_b softplus(-z[u, b] . softmax(logits[u])) (z [U, B, r]), by hand."""
    w = torch.softmax(logits, -1)  # [U, r]
    s = torch.sigmoid(-(z @ w.unsqueeze(-1))).neg_().div_(z.shape[1])  # dL/dmargin [U, B, 1]
    dw = (s * z).sum(1)  # [U, r]
    return w * (dw - (dw * w).sum(-1, keepdim=True))
