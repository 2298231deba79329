"""Peer methods (drm, lore) and active acquisition of `micro adapt`: known answers and the protocol."""

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import load_split
from micro.heads import simulate
from micro.router.config import AdaptConfig
from micro.router.draws import attribute_rows
from micro.router.peers import drm_heads, drm_margins, drm_weights, fit_lore, fit_lore_users


def test_drm_heads_are_the_principal_directions_with_both_signs():
    gen = torch.Generator().manual_seed(0)
    diff = torch.randn(300, 12, generator=gen) @ torch.diag(torch.linspace(3.0, 0.2, 12)) + 5.0  # off-centre
    heads = drm_heads(diff, 4)
    assert heads.shape == (8, 12)
    torch.testing.assert_close(heads[4:], -heads[:4])
    x = diff.double().numpy()
    x = x - x.mean(0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)  # float64 reference
    for k in range(4):  # a direction up to its sign (both signs are heads)
        assert abs(float(np.dot(heads[k].double().numpy(), vt[k]))) == pytest.approx(1.0, abs=1e-5)
    assert drm_heads(diff, 100).shape == (24, 12)  # at most d components
    # a large matrix takes the low-rank solver: the same top directions as the full float64 SVD
    wide = torch.randn(3000, 400, generator=gen) @ torch.diag(torch.logspace(1, -1, 400)) + 1.0
    low = drm_heads(wide, 8)[:8].double().numpy()
    x = wide.double().numpy()
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert all(abs(float(np.dot(low[k], vt[k]))) > 0.999 for k in range(8))


def test_drm_weights_follow_the_formula_on_a_hand_case():
    margins = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 1.0]])  # 3 pairs x 2 heads
    weights, scale = drm_weights(margins, temperature=1.0)
    s = torch.tensor([(1 + 9 + 1) / 3, (4 + 0.25 + 1) / 3]).sqrt()
    loss = torch.tensor([sum(np.log1p(np.exp(-float(m) / float(s[h]))) for m in margins[:, h]) for h in range(2)])
    torch.testing.assert_close(scale, s)
    torch.testing.assert_close(weights, torch.softmax(-loss.float(), 0))
    heads = torch.eye(2)
    torch.testing.assert_close(drm_margins(torch.tensor([[2.0, 1.0]]), heads, weights, scale),
                               (torch.tensor([2.0, 1.0]) / s * weights).sum().reshape(1))
    hot, _ = drm_weights(margins, temperature=1e-3)  # a low temperature puts the mass on the lower loss
    assert int(hot.argmax()) == int(loss.argmin()) and float(hot.max()) > 0.99


def test_lore_recovers_planted_group_directions(tmp_path):
    truth = simulate(tmp_path / "s.h5", groups=3, dim=16, pairs=3000, regime="shared", seed=1, scale=6.0)
    train = load_split(tmp_path / "s.h5", "train")
    model = fit_lore(train.diff, train.attribute, 3, steps=300, lr=0.05, seed=0)
    directions = torch.as_tensor(truth.directions, dtype=torch.float32)
    learned = model.basis @ torch.softmax(model.logits, -1).T  # [d, G]
    cos = torch.nn.functional.cosine_similarity(learned.T, directions, dim=-1)
    assert float(cos.min()) > 0.9, cos
    rows = attribute_rows(train)
    diff = torch.stack([train.diff[rows[g][:40]] for g in range(3)])  # a new user per group, 40 pairs each
    user = fit_lore_users(model, diff, steps=300, lr=0.05)
    user_cos = torch.nn.functional.cosine_similarity((model.basis @ torch.softmax(user, -1).T).T, directions, dim=-1)
    assert float(user_cos.min()) > 0.8, user_cos


def test_adapt_cli_scores_peers_and_records_the_acquisition_rule(tmp_path, planted_run):
    run = CliRunner()
    cache, _ = planted_run(pairs=900, dim=12)
    out = tmp_path / "adapt"
    res = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(out), "--budgets", "5,12",
                           "--seeds", "2", "--methods", "micro,micro-refine,peers", "--acquire", "bald",
                           "--set", "acquire.random=0.5", "--set", "drm.components=3", "--set", "lore.rank=2",
                           "--set", "lore.steps=50", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} >= {"micro", "micro-refine", "drm", "lore", "lore-seen"}
    assert {r["acquire"] for r in rows} == {"bald"}
    results = json.loads((out / "results.json").read_text())
    assert results["acquire"] == "bald" and results["config"]["options"]["acquire"]["random"] == 0.5
    assert results["config"]["options"]["lore"] == {"rank": 2, "steps": 50}
    table = (out / "table.md").read_text()
    assert "DRM (B = 12)" in table and "LoRe (B = 12)" in table and "LoRe (seen groups) † (B = 12)" in table
    bad = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--acquire", "psychic"])
    assert bad.exit_code == 2 and "acquire must be one of" in bad.output


def test_adapt_refuses_bad_peer_options():
    from micro.router.methods.peers import DrmOptions, LoreOptions

    with pytest.raises(ValueError, match="lore: rank"):
        LoreOptions(rank=0)
    with pytest.raises(ValueError, match="drm: components"):
        DrmOptions(components=0)
    with pytest.raises(ValueError, match="acquire"):
        AdaptConfig(acquire="psychic")
    with pytest.raises(TypeError):
        AdaptConfig(lore_rank=2)  # a removed option: now --set lore.rank=N


@pytest.fixture
def one_thread():
    """Small full-batch fits: one thread is faster than two fighting over a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_unseen_lore_scores_each_group_with_a_basis_that_never_saw_its_pairs(tmp_path, one_thread):
    """fit_lore_unseen deals the groups into disjoint folds; the basis that scores group g is unchanged, bit for
    bit, when g's labels are flipped (its pairs never reach that fit), while the basis that did see g moves."""
    from micro.router.peers import fit_lore_unseen

    simulate(tmp_path / "s.h5", groups=4, dim=12, pairs=1200, regime="shared", seed=2)
    train = load_split(tmp_path / "s.h5", "train")
    kw = dict(steps=40, lr=0.05, seed=3)
    bases, basis_of = fit_lore_unseen(train.diff, train.attribute, 2, **kw)
    assert len(bases) == 2 and basis_of.tolist().count(0) == 2 and basis_of.tolist().count(1) == 2  # 4 groups, 2 folds
    for g in range(4):
        flipped = torch.where((train.attribute == g)[:, None], -train.diff, train.diff)  # g's labels flipped
        again, same_folds = fit_lore_unseen(flipped, train.attribute, 2, **kw)
        assert torch.equal(same_folds, basis_of)
        mine = int(basis_of[g])
        assert torch.equal(again[mine].basis, bases[mine].basis), g  # the scoring basis never saw g
        assert not torch.equal(again[1 - mine].basis, bases[1 - mine].basis), g  # the other one did
    assert len(fit_lore_unseen(train.diff, train.attribute, 2, folds=9, **kw)[0]) == 4  # at most one fold per group
    with pytest.raises(ValueError, match="at least 2 groups"):
        fit_lore_unseen(train.diff, torch.zeros_like(train.attribute), 2, **kw)


def test_projected_lore_fit_agrees_with_the_plain_fit(tmp_path, one_thread):
    """The fit in the subspace (top uncentred singular directions + group means, then one round of the groups'
    full-space gradients) scores the test pairs as the plain full-space fit does, on an isotropic planted cache
    (where the singular directions alone miss the groups) and on one whose pairs vary along the groups
    (`spread`). The subspace is orthonormal and holds the directions asked for plus one mean per group."""
    from micro.router.peers import lore_subspace, unit_rms_scale

    for spread in (0.0, 4.0):
        path = tmp_path / f"s{spread}.h5"
        simulate(path, groups=3, dim=96, pairs=3000, seed=1, spread=spread)
        train, test = load_split(path, "train"), load_split(path, "test")
        x = train.diff / unit_rms_scale(train.diff)
        space = lore_subspace(x, train.attribute, 16)
        assert space.shape == (96, 19)
        torch.testing.assert_close(space.T @ space, torch.eye(19), atol=1e-5, rtol=0)
        accuracy = {}
        for project in (None, 16):
            model = fit_lore(train.diff, train.attribute, 3, steps=200, lr=0.05, seed=0, project=project)
            assert model.basis.shape == (96, 3)
            accuracy[project] = np.mean([float((model.margins(test.diff[test.attribute == g], model.logits[g]) > 0).float().mean())
                                         for g in range(3)])
        gap = accuracy[16] - accuracy[None]
        # isotropic: the same to a point (measured +0.009); spread: never worse, and up to 0.02 better (measured
        # +0.020; the plain fit is the less converged one there: its own seeds 0 and 1 differ by 0.033 at 64 x 6000)
        assert (abs(gap) < 0.015) if spread == 0 else (-0.01 < gap < 0.03), (spread, accuracy)
        assert accuracy[None] > 0.8, accuracy
    assert lore_subspace(x, train.attribute, 64) is None  # no smaller space: the plain fit


def test_lore_hand_gradients_match_autograd():
    """The basis fit's and a new user's hand-derived gradients agree with autograd on the same losses."""
    import torch.nn.functional as F

    from micro.router import peers

    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(200, 12, generator=gen, dtype=torch.float64), torch.randint(0, 3, (200,), generator=gen)
    basis = torch.randn(12, 4, generator=gen, dtype=torch.float64).requires_grad_()
    logits = torch.randn(3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    F.softplus(-((x @ basis) * torch.softmax(logits, -1)[g]).sum(-1)).mean().backward()
    got = peers.lore_gradients(x, F.one_hot(g, 3).double(), basis.detach(), logits.detach())
    torch.testing.assert_close(got[0], basis.grad)
    torch.testing.assert_close(got[1], logits.grad)

    # a new user's logits
    z = torch.randn(5, 7, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64).requires_grad_()
    F.softplus(-(z @ torch.softmax(w, -1).unsqueeze(-1))).squeeze(-1).mean(-1).sum().backward()
    torch.testing.assert_close(peers.lore_user_gradient(z, w.detach()), w.grad)
