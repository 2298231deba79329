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
                           "--seeds", "2", "--no-baselines", "--acquire", "bald", "--acquire-random", "0.5", "--drm-components", "3",
                           "--lore-rank", "2", "--lore-steps", "50", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} >= {"micro", "micro-refine", "drm", "lore"}
    assert {r["acquire"] for r in rows} == {"bald"}
    results = json.loads((out / "results.json").read_text())
    assert results["acquire"] == "bald" and results["config"]["acquire_random"] == 0.5 and results["config"]["lore_rank"] == 2
    assert "DRM (B = 12)" in (out / "table.md").read_text() and "LoRe (B = 12)" in (out / "table.md").read_text()
    bad = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--acquire", "psychic"])
    assert bad.exit_code == 2 and "acquire must be one of" in bad.output


def test_adapt_config_refuses_bad_peer_fields():
    with pytest.raises(ValueError, match="lore_rank"):
        AdaptConfig(lore_rank=0)
    with pytest.raises(ValueError, match="acquire"):
        AdaptConfig(acquire="psychic")
    with pytest.raises(ValueError, match="acquire_random"):
        AdaptConfig(acquire_random=1.5)
