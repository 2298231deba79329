"""`micro audit` (paper section 8) and head masking, on a simulated cache whose truth is known."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import load_split, read_meta
from micro.evaluate import paired_difference_bounds, resolve_mask
from micro.heads import MixtureConfig, load_run, simulate
from micro.heads.model import MixtureRewardModel, save_model
from micro.heads.run import cache_identity
from micro.router import EmbeddingRewardModel, load_router, save_router

K = 5
UNSAFE = 2


def _save_run(path, cache, heads: torch.Tensor, method: str, router_seed: int | None = None):
    meta = read_meta(cache)
    model = MixtureRewardModel(heads.shape[1], heads.shape[0], weights="router" if heads.shape[0] > 1 else "uniform", router="linear")
    with torch.no_grad():
        model.heads.copy_(heads)
        if model.router is not None and router_seed is not None:
            gen = torch.Generator().manual_seed(router_seed)
            for p in model.router.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    cfg = MixtureConfig(method=method, k=heads.shape[0], router="linear", router_input="prompt")
    save_model(model, path, {"config": cfg.to_dict(), "cache": cache_identity(meta, cache)})
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One planted safety direction u (the chosen response is the one u prefers, ~85 % of labels); a run
    whose heads are u, u + noise, -u (the planted unsafe head), a weaker honest head and u again; the
    single sibling is u."""
    root = tmp_path_factory.mktemp("audit")
    cache = root / "safety.h5"
    truth = simulate(cache, groups=1, dim=16, pairs=1200, seed=3)
    u = torch.as_tensor(truth.directions[0], dtype=torch.float32) * truth.scale
    gen = torch.Generator().manual_seed(0)
    noise = lambda s: s * torch.randn(u.shape, generator=gen) * u.norm() / 4  # noqa: E731
    heads = torch.stack([u, u + noise(0.15), -u, u + noise(0.4), 0.5 * u])
    _save_run(root / "runs" / "micro", cache, heads, "micro", router_seed=1)
    _save_run(root / "runs" / "single", cache, u.unsqueeze(0), "single")
    return root, cache, heads


def test_audit_flags_the_planted_unsafe_head_and_only_it(planted):
    root, cache, _ = planted
    out = root / "audit"
    res = CliRunner().invoke(app, ["audit", str(root / "runs" / "micro"), str(cache), "--out", str(out)])
    assert res.exit_code == 0, res.output
    audit = json.loads((out / "audit.json").read_text())
    assert audit["flagged"] == [UNSAFE]
    assert audit["reference"]["name"] == "single"
    heads = audit["heads"]
    assert heads[UNSAFE]["accuracy"] < 0.3 and heads[UNSAFE]["mean_margin"] < 0
    assert all(h["accuracy"] > 0.6 for h in heads if h["head"] != UNSAFE)
    # the noisiest honest head errs more than the single head by more than the 5-point threshold, but not
    # clearly so: a bare cut-off would flag it, the confidence bound does not
    assert heads[3]["excess"] > audit["config"]["threshold"] > heads[3]["lower_bound"] and not heads[3]["flagged"]
    assert "FLAGGED" in res.output and f"flagged heads: [{UNSAFE}]" in res.output
    assert resolve_mask(None, out / "audit.json") == [UNSAFE] == resolve_mask(str(UNSAFE), out)
    again = CliRunner().invoke(app, ["audit", str(root / "runs" / "micro"), str(cache), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_masked_rewards_are_the_renormalised_mixture_of_the_other_heads(planted, tmp_path):
    root, cache, heads = planted
    model, _ = load_run(root / "runs" / "micro")
    split = load_split(cache, "test")
    x = split.prompt_inputs()
    weights = torch.softmax(model.router_logits(x), -1)
    keep = torch.tensor([h not in (1, UNSAFE) for h in range(K)])
    expected_w = weights[:, keep] / weights[:, keep].sum(-1, keepdim=True)
    expected = (expected_w * (split.diff @ heads[keep].T)).sum(-1)

    model.mask_heads([1, UNSAFE])
    assert model.masked_heads == [1, UNSAFE]
    masked_w = model.log_weights(x).exp()
    assert torch.all(masked_w[:, ~keep] == 0)
    torch.testing.assert_close(model.routed_margin(split.diff, x), expected)
    # the adapted-router API and a saved router keep the mask
    path = save_router(tmp_path / "r.safetensors", model.router, {"masked_heads": model.masked_heads})
    router, meta = load_router(path)
    prm = EmbeddingRewardModel(model, router)
    torch.testing.assert_close(prm.margins(split.diff, x), expected)
    with pytest.raises(ValueError, match="cannot mask all"):
        model.mask_heads(range(K))
    with pytest.raises(ValueError, match="heads 0..4"):
        model.mask_heads([7])


def test_eval_with_a_mask_from_the_audit(planted):
    root, cache, heads = planted
    audit = root / "audit-for-eval"
    assert CliRunner().invoke(app, ["audit", str(root / "runs" / "micro"), str(cache), "--out", str(audit)]).exit_code == 0
    out = root / "eval"
    res = CliRunner().invoke(app, ["eval", str(root / "runs" / "micro"), str(cache), "--out", str(out),
                                   "--mask-from", str(audit / "audit.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["mask_heads"] == [UNSAFE]
    assert {"single", "routed", "head-0", f"head-{K - 1}"} <= set(results["methods"])
    assert "Head 2 (masked)" in (out / "table.md").read_text()
    # the routed accuracy equals the renormalised mixture of the other heads, computed by hand
    model, _ = load_run(root / "runs" / "micro")
    correct = 0
    for split in ("train", "test"):
        s = load_split(cache, split)
        w = torch.softmax(model.router_logits(s.prompt_inputs()), -1)
        w[:, UNSAFE] = 0
        correct += int(((w * (s.diff @ heads.T)).sum(-1) > 0).sum())
    assert results["overall"]["accuracy"]["routed"] == pytest.approx(correct / results["overall"]["n"])


def test_paired_bound_matches_a_paired_bootstrap():
    rng = np.random.default_rng(0)
    n = 3000
    first = rng.random(n) < 0.35
    second = np.where(rng.random(n) < 0.7, first, rng.random(n) < 0.3)  # correlated with first
    diff, lower, upper = paired_difference_bounds(first, second, 1.6449)
    d = first.astype(int) - second.astype(int)
    boot = np.array([d[rng.integers(0, n, n)].mean() for _ in range(2000)])
    assert diff == pytest.approx(d.mean())
    assert lower == pytest.approx(np.quantile(boot, 0.05), abs=0.004)
    assert upper == pytest.approx(np.quantile(boot, 0.95), abs=0.004)
    same, lo, hi = paired_difference_bounds(first, first, 1.96)
    assert same == 0 and lo < 0 < hi


def test_stage2_adapts_with_the_mask_in_place(tmp_path):
    from micro.heads import run_fit_mixture
    from micro.router import AdaptConfig, run_adapt, soft_labels

    # infinite loss on a masked head gives exactly the Hedge labels of the masked (renormalised) prior
    gen = torch.Generator().manual_seed(0)  # float64: at tau 1e-3 the losses / tau reach ~3e3, beyond float32's 1e-5
    logits, losses = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.rand(6, 4, generator=gen, dtype=torch.float64) * 3
    mask = torch.tensor([False, True, False, False])
    masked_prior = torch.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
    for tau in (1e-3, 1.0):
        torch.testing.assert_close(soft_labels(torch.log_softmax(logits, -1), losses.masked_fill(mask, float("inf")), tau).exp(),
                                   soft_labels(masked_prior, losses, tau).exp())

    cache = tmp_path / "sim.h5"
    simulate(cache, groups=2, dim=8, pairs=600, seed=2)
    run_fit_mixture(cache, tmp_path / "run", MixtureConfig(k=3, epochs=1))
    results = run_adapt(cache, tmp_path / "run", tmp_path / "adapt",
                        AdaptConfig(budgets=[5], seeds=1, methods=["default", "-baselines"], mask_heads=[1]))
    assert results["config"]["mask_heads"] == [1]
    router, meta = load_router(tmp_path / "adapt" / "routers" / "b5_s0.safetensors")
    assert meta["masked_heads"] == [1]
    x = load_split(cache, "test").context_inputs()
    w = torch.softmax(router(x), -1)
    assert torch.all(w[:, 1] == 0) and torch.allclose(w.sum(-1), torch.ones(len(x)))
