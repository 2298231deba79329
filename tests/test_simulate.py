"""`micro simulate`: the planted truth is stored and consistent, and the identifiability limits of
stage 1 (docs/design.md) show up where they should."""

import numpy as np
import pytest
import torch

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, bayes_accuracy, evaluate, fit_mixture, load_truth, match_heads, simulate

torch.set_num_threads(1)


def test_cache_and_truth_round_trip(tmp_path):
    truth = simulate(tmp_path / "s.h5", groups=4, dim=16, pairs=800, seed=2)
    meta = read_meta(tmp_path / "s.h5")
    assert meta["model_id"] == "simulate" and meta["hidden_size"] == 16
    assert meta["attributes"] == ["group0", "group1", "group2", "group3"]
    loaded = load_truth(tmp_path / "s.h5")
    np.testing.assert_allclose(loaded.directions, truth.directions)
    train = load_split(tmp_path / "s.h5", "train")
    # stored scores are the planted ones: s_g = scale * u_g . (chosen - rejected) (float16 embeddings)
    s = loaded.scale * train.diff.double().numpy() @ loaded.directions.T
    np.testing.assert_allclose(s, loaded.pair_scores[train.pair_rows], atol=0.05)
    assert (train.attribute.numpy() == loaded.pair_group[train.pair_rows]).all()
    # (context + prompt) input = prompt embedding + the group's context vector
    ctx = train.context_inputs().double().numpy() - train.prompt_inputs().double().numpy()
    np.testing.assert_allclose(ctx, loaded.context_vectors[train.attribute.numpy()], atol=0.02)
    # labels are learnable but noisy, and the prompt tells less than the context
    assert 0.84 < bayes_accuracy(loaded, train, with_context=True) < 0.92
    assert bayes_accuracy(loaded, train, with_context=False) < bayes_accuracy(loaded, train, with_context=True)


def test_shared_regime_labels_the_same_pairs_by_every_group(tmp_path):
    truth = simulate(tmp_path / "s.h5", groups=3, pairs=600, regime="shared")
    train = load_split(tmp_path / "s.h5", "train")
    assert np.allclose(truth.pair_weights, 1 / 3)
    # each (prompt, {a, b}) triple appears once per group
    key = train.prompt_index.numpy()
    assert np.bincount(train.attribute.numpy()).tolist() == [len(train) // 3] * 3
    assert len(np.unique(key)) <= len(train) // 3


def test_shared_regime_groups_conflict_and_prompt_regime_is_unchanged(tmp_path):
    """'shared' centres the group directions (conflict=1): unit vectors summing to ~0, every pairwise cosine
    negative and their mean ~ -1/(G-1). 'prompt' keeps the independent random directions of the paper's regime (conflict=0), drawn
    exactly as before the parameter existed; the same seed's 'shared' directions are their centred version."""
    G, d = 4, 64
    shared = simulate(tmp_path / "s.h5", groups=G, dim=d, pairs=800, regime="shared", seed=5)
    prompt = simulate(tmp_path / "p.h5", groups=G, dim=d, pairs=800, regime="prompt", seed=5)
    v = np.random.default_rng(5).normal(size=(G, d))
    np.testing.assert_allclose(prompt.directions, v / np.linalg.norm(v, axis=1, keepdims=True))
    c = v - v.mean(0)
    np.testing.assert_allclose(shared.directions, c / np.linalg.norm(c, axis=1, keepdims=True))
    assert np.linalg.norm(shared.directions.sum(0)) < 0.3 < np.linalg.norm(prompt.directions.sum(0))
    cos = shared.directions @ shared.directions.T
    off = cos[~np.eye(G, dtype=bool)]
    assert (off < 0).all() and abs(off.mean() + 1 / (G - 1)) < 0.03, off
    assert shared.params["conflict"] == 1.0 and prompt.params["conflict"] == 0.0
    assert load_truth(tmp_path / "s.h5").params["conflict"] == 1.0
    # conflict is a knob: 'shared' without it keeps independent directions, 'prompt' can have it
    np.testing.assert_allclose(simulate(tmp_path / "s0.h5", groups=G, dim=d, pairs=800, regime="shared", seed=5, conflict=0).directions,
                               prompt.directions)
    with pytest.raises(ValueError, match="conflict"):
        simulate(tmp_path / "x.h5", pairs=800, conflict=2.0)


REGIMES = ("prompt", "shared")


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Both regimes at d=64, G=3, 18K labeled pairs (shared: 6K triples x 3 groups), seed 0."""
    out = {}
    for regime in REGIMES:
        path = tmp_path_factory.mktemp(regime) / f"{regime}.h5"
        truth = simulate(path, regime=regime, pairs=18000, seed=0)
        out[regime] = (truth, load_split(path, "train"), load_split(path, "test"))
    return out


def test_prompt_only_stage1_cannot_separate_conflicting_groups_in_shared_regime(sims):
    """Same pairs labeled by every group, prompt independent of the group, groups that conflict: one BT
    head sits near 50 % on average (measured 0.49: 0.59 / 0.48 / 0.41), and a prompt-routed mixture (the
    paper's stage 1, and the prompt router with batch balance) has nothing to route on: its heads stay
    unspecialised (matched cosine <= 0.15 measured) and near chance, far below the with-context Bayes rule (0.88)."""
    truth, train, test = sims["shared"]
    bayes = bayes_accuracy(truth, test, with_context=True)
    single = evaluate(fit_mixture(train, MixtureConfig(method="single", epochs=3)), test)
    assert single["average"]["best_accuracy"] <= 0.55
    for config in (MixtureConfig.paper(k=3), MixtureConfig(k=3, router_input="prompt", balance="batch")):
        model = fit_mixture(train, config)
        result = evaluate(model, test, router_input="prompt")
        assert max(match_heads(truth, model.head_vectors())["cosine"]) < 0.4, config
        assert result["average"]["routed_accuracy"] <= 0.55, (config, result["average"])
        assert result["average"]["best_accuracy"] <= 0.6 < bayes - 0.25, (config, result["average"])


@pytest.mark.parametrize("regime", REGIMES)
def test_context_router_with_batch_balance_recovers_groups(sims, regime):
    """The default stage 1 (router on context + prompt, batch balance) finds the planted groups in both
    regimes (matched cosine >= 0.9; measured 0.99) and each group's best head is near its Bayes rule."""
    truth, train, test = sims[regime]
    model = fit_mixture(train, MixtureConfig(k=3, router_input="context", balance="batch"))
    assert min(match_heads(truth, model.head_vectors())["cosine"]) >= 0.9
    result = evaluate(model, test, router_input="context")
    realised = {g: bayes_accuracy(truth, test.subset(torch.nonzero(test.attribute == g).flatten()), True, realised=True) for g in range(3)}
    for g in range(3):
        assert result["per_attribute"][f"group{g}"]["best_accuracy"] >= realised[g] - 0.03
        assert result["per_attribute"][f"group{g}"]["routed_accuracy"] >= realised[g] - 0.03


def test_negative_conflict_adds_the_common_direction_so_most_pairs_are_consensus(tmp_path):
    """c < 0 adds the groups' mean direction: most pairs are then ranked alike by every group, and more so
    the more negative c is (the setting of benchmarks/acquire.py's consensus caches)."""
    def consensus(conflict):
        truth = simulate(tmp_path / f"c{conflict}.h5", groups=3, dim=64, pairs=1200, regime="shared", seed=1,
                         conflict=conflict)
        signs = np.sign(truth.pair_scores)
        return float(np.mean(np.all(signs == signs[:, :1], axis=1)))

    share = [consensus(c) for c in (1.0, 0.0, -4.0, -12.0)]
    assert share[0] < 0.05 and share[1] < 0.4 < 0.6 < share[2] < share[3], share


def test_decisive_makes_pairs_that_tell_the_groups_apart_rare_and_sure(tmp_path):
    """decisive=q: about 1 - q of the pairs get the same score from every group (consensus by construction,
    not only by sign), the rest are decisive: the groups' scores there spread widely and often differ in
    sign. The default draw (None) is unchanged, and q outside (0, 1] is refused."""
    kw = dict(groups=8, dim=64, pairs=4000, regime="shared", seed=3, conflict=-4.0)
    plain = simulate(tmp_path / "plain.h5", **kw)
    truth = simulate(tmp_path / "rare.h5", decisive=0.1, **kw)
    np.testing.assert_allclose(truth.directions, plain.directions)  # same groups, other pairs
    spread = truth.pair_scores.max(1) - truth.pair_scores.min(1)
    same = spread < 1e-6
    assert 0.85 < same.mean() < 0.95, same.mean()
    signs = np.sign(truth.pair_scores[~same])
    assert np.mean(~np.all(signs == signs[:, :1], axis=1)) > 0.8  # decisive pairs mostly split the groups
    plain_spread = plain.pair_scores.max(1) - plain.pair_scores.min(1)
    assert np.median(spread[~same]) > 2 * np.median(plain_spread)  # and by a larger margin than a plain pair
    assert load_truth(tmp_path / "rare.h5").params["decisive"] == 0.1 and plain.params["decisive"] is None
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="decisive"):
            simulate(tmp_path / "x.h5", pairs=800, decisive=bad)


def test_a_cache_from_before_a_new_field_counts_as_the_same_parameters(tmp_path):
    """A cache written before a SimulateConfig field existed records no value for it: re-simulating it
    with that field at its default is the same cache, not a refusal."""
    import json

    import h5py

    path = tmp_path / "old.h5"
    simulate(path, groups=3, dim=16, pairs=600, seed=1)
    with h5py.File(path, "r+") as f:
        params = json.loads(f.attrs["simulation"])
        del params["decisive"]
        f.attrs["simulation"] = json.dumps(params)
    simulate(path, groups=3, dim=16, pairs=600, seed=1)  # no refusal
    with pytest.raises(Exception, match="decisive"):
        simulate(path, groups=3, dim=16, pairs=600, seed=1, decisive=0.5)


def test_spread_makes_the_principal_directions_of_the_differences_the_group_directions(tmp_path):
    """spread=s adds s * z_g u_g (z_g ~ N(0, 1)) to each pair's difference for each group g that labels it: the
    top principal directions of the centred differences (drm's heads) then span the planted group directions
    (principal-angle cosines measured 0.994 / 0.992 / 0.955), where without spread they see nothing of them
    (0.165 / 0.129 / 0.010). The rest of the draw is the same (directions, groups, prompts), spread 0 is the
    default cache byte for byte, and a negative spread or spread with decisive is refused."""
    import hashlib

    from micro.router.peers import drm_heads

    def principal_cosines(spread):
        truth = simulate(tmp_path / f"s{spread}.h5", dim=64, pairs=3000, seed=1, spread=spread)
        train = load_split(tmp_path / f"s{spread}.h5", "train")
        heads = drm_heads(train.diff, 3)[:3].double().numpy()
        span = np.linalg.qr(truth.directions.T)[0]  # [d, G] orthonormal basis of the group directions
        return truth, np.linalg.svd(heads @ span, compute_uv=False)

    plain, flat = principal_cosines(0.0)
    spread, aligned = principal_cosines(4.0)
    assert aligned.min() > 0.9 and flat.max() < 0.3, (aligned, flat)
    np.testing.assert_allclose(spread.directions, plain.directions)
    assert (spread.pair_group == plain.pair_group).all()
    # the score of a pair along its own group grew, the others' did not (float16 embeddings: compare spreads)
    own = np.arange(len(plain.pair_group)), plain.pair_group
    assert spread.pair_scores[own].std() > 2 * plain.pair_scores[own].std()
    assert spread.params["spread"] == 4.0 and "spread" not in plain.params  # recorded only when set
    simulate(tmp_path / "d.h5", dim=64, pairs=3000, seed=1)
    digest = [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("s0.0.h5", "d.h5")]
    assert digest[0] == digest[1]
    for bad in (dict(spread=-1.0), dict(spread=1.0, decisive=0.5)):
        with pytest.raises(ValueError, match="spread"):
            simulate(tmp_path / "x.h5", pairs=600, **bad)


def test_no_contexts_writes_a_cache_without_contexts_that_load_split_reads(tmp_path):
    """contexts=False writes what `micro embed` writes for data with no context column: no context texts, no
    (context + prompt) table, -1 in the pairs' context columns; the attribute column (the labelling group) and
    every difference vector are those of the same draw with contexts. `micro simulate --no-contexts` reaches it."""
    import h5py
    from typer.testing import CliRunner

    from micro.cli import app
    from micro.embedcache.store import CacheError, require_contexts

    simulate(tmp_path / "with.h5", groups=3, dim=16, pairs=600, regime="shared", seed=4)
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "none.h5"), "--groups", "3", "--dim", "16",
                                      "--pairs", "600", "--regime", "shared", "--seed", "4", "--no-contexts"])
    assert result.exit_code == 0 and "no contexts" in result.output, result.output
    with_ctx, without = load_split(tmp_path / "with.h5", "train"), load_split(tmp_path / "none.h5", "train")
    assert with_ctx.has_context and not without.has_context and without.context_embedding is None
    assert (without.context_index == -1).all() and (without.context_id == -1).all()
    assert torch.equal(without.attribute, with_ctx.attribute) and torch.equal(without.diff, with_ctx.diff)
    assert without.attributes == ["group0", "group1", "group2"]
    with pytest.raises(CacheError, match="no context"):
        require_contexts(without)
    with h5py.File(tmp_path / "none.h5") as f:
        assert "context_prompts" not in f and len(f["contexts/text"]) == 0
    assert load_truth(tmp_path / "none.h5").params["contexts"] is False
