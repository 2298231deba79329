"""`micro simulate`: the planted truth is stored and consistent, and the identifiability limits of
stage 1 (DESIGN.md) show up where they should."""

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


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared") / "shared.h5"
    truth = simulate(path, regime="shared", pairs=18000, seed=0)
    return truth, load_split(path, "train"), load_split(path, "test")


def test_prompt_only_stage1_cannot_separate_groups_in_shared_regime(shared):
    """Same pairs labeled by every group, prompt independent of the group: the prompt router has nothing
    to route on, and every head stays at the single head's accuracy, far below the with-context Bayes rule."""
    truth, train, test = shared
    single = evaluate(fit_mixture(train, MixtureConfig(method="single", epochs=3)), test)
    for balance in ("example", "batch"):
        result = evaluate(fit_mixture(train, MixtureConfig(k=3, epochs=3, balance=balance)), test)
        for g in range(3):
            best = result["per_attribute"][f"group{g}"]["best_accuracy"]
            assert abs(best - single["per_attribute"][f"group{g}"]["best_accuracy"]) < 0.03
        assert result["average"]["best_accuracy"] < bayes_accuracy(truth, test, with_context=True) - 0.15


def test_context_router_with_batch_balance_recovers_groups_in_shared_regime(shared):
    truth, train, test = shared
    model = fit_mixture(train, MixtureConfig(k=3, epochs=6, router_input="context", balance="batch"))
    assert min(match_heads(truth, model.head_vectors())["cosine"]) >= 0.9
    result = evaluate(model, test, router_input="context")
    realised = {g: bayes_accuracy(truth, test.subset(torch.nonzero(test.attribute == g).flatten()), True, realised=True) for g in range(3)}
    for g in range(3):
        assert result["per_attribute"][f"group{g}"]["best_accuracy"] >= realised[g] - 0.03
