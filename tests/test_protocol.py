"""The evaluation protocol of stage 2, one rule per test, each named after what it protects.

Every test here was checked by breaking its rule in the code once (drawing budgets from the test split,
budgets not nested, draws ignoring the seed, every method losing HyRe's shots, pooled or max averages,
tau forced to 1.0, a constant batch order, baselines fitted on a foreign cache) and watching it fail.
"""

import shutil

import numpy as np
import pytest
import torch

from micro import paper
from micro.embedcache import load_split
from micro.embedcache.store import CacheError
from micro.heads import MixtureConfig, run_fit_mixture, simulate
from micro.methods import REGISTRY
from micro.router import AdaptConfig, adapt_routers, run_adapt, soft_labels, summarise
from micro.router.methods import micro as micro_method
from micro.router.draws import draw_budget_pairs, draw_shots
from micro.router.presets import paper_adapt_config

torch.set_num_threads(1)
SMALL = dict(seeds=2)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    cache = root / "sim.h5"
    simulate(cache, groups=3, dim=16, pairs=900, seed=0)
    run_fit_mixture(cache, root / "run", MixtureConfig(k=3, epochs=2))
    return cache, root / "run", root


@pytest.fixture(scope="module")
def adapted(sim):
    cache, run, root = sim
    return run_adapt(cache, run, root / "adapt", AdaptConfig(budgets=[5, 10], **SMALL))


def _spy_adapt(monkeypatch):
    """Record what run_adapt hands to adapt_routers."""
    calls = []

    def spy(router, inputs, losses, seeds, **kw):
        calls.append({"inputs": inputs.clone(), "losses": losses.clone(), "seeds": list(seeds), **kw})
        return adapt_routers(router, inputs, losses, seeds, **kw)

    monkeypatch.setattr(micro_method, "adapt_routers", spy)
    return calls


def test_budget_pairs_come_from_the_train_split_only(sim, monkeypatch, tmp_path):
    cache, run, _ = sim
    calls = _spy_adapt(monkeypatch)
    run_adapt(cache, run, tmp_path, AdaptConfig(budgets=[5], methods=["default", "-baselines"], **SMALL))
    train = load_split(cache, "train")
    expected = torch.stack([train.context_inputs()[np.concatenate([d[a] for a in sorted(d)])]
                            for d in (draw_budget_pairs(train, s, 5) for s in (0, 1))])
    assert torch.equal(calls[0]["inputs"], expected)
    with pytest.raises(ValueError, match="train split"):
        draw_budget_pairs(load_split(cache, "test"), 0, 5)


def test_budget_pairs_are_nested_across_budgets(sim):
    train = load_split(sim[0], "train")
    for seed in (0, 1):
        small, large = draw_budget_pairs(train, seed, 5), draw_budget_pairs(train, seed, 20)
        for a in small:
            assert set(small[a]) <= set(large[a])
            assert np.array_equal(small[a], large[a][:5])


def test_budget_pairs_differ_per_seed(sim):
    train = load_split(sim[0], "train")
    a, b = draw_budget_pairs(train, 0, 10), draw_budget_pairs(train, 1, 10)
    assert all(not np.array_equal(a[g], b[g]) for g in a)


def test_hyre_shots_differ_per_seed_and_come_from_the_test_split(sim):
    test = load_split(sim[0], "test")
    a, b = draw_shots(test, 0, 16), draw_shots(test, 1, 16)
    rows = test.attribute.numpy()
    for g in a:
        assert not np.array_equal(np.sort(a[g]), np.sort(b[g]))
        assert (rows[a[g]] == g).all()


def test_batch_order_depends_on_the_seed():
    torch.manual_seed(0)
    from micro.heads.model import Router

    router = Router(6, 3, "mlp", 8)
    x, losses = torch.randn(1, 64, 6), torch.rand(1, 64, 3) * 3
    kw = dict(tau=1.0, epochs=2, batch_size=8, lr=1e-2)
    r0, r0_again, r1 = (adapt_routers(router, x, losses, [s], **kw)[0] for s in (0, 0, 1))
    probe = torch.randn(5, 6)
    assert torch.equal(r0(probe), r0_again(probe))
    assert not torch.allclose(r0(probe), r1(probe))


def test_non_hyre_methods_are_scored_on_the_full_test_set(sim, adapted):
    test = load_split(sim[0], "test")
    full = {name: int((test.attribute == a).sum()) for a, name in enumerate(test.attributes)}
    shots = draw_shots(test, 0, 16)
    seen = set()
    for r in adapted["records"]:
        seen.add(r["method"])
        expected = full[r["attribute"]]
        if REGISTRY[r["method"]].uses_test_shots:
            expected -= len(shots[test.attributes.index(r["attribute"])])
        assert r["pairs"] == expected, r
    assert {"single", "micro", "hyre", "micro-hyre", "oracle"} <= seen
    assert adapted["test_pairs"] == full
    # budget-free methods that use no shots do not vary with the seed
    single = {(r["seed"], r["attribute"]): r["accuracy"] for r in adapted["records"] if r["method"] == "single"}
    assert all(single[(0, a)] == single[(1, a)] for a in full)


def test_averages_are_per_attribute_means(adapted):
    by_seed = {}
    for r in adapted["records"]:
        if r["method"] == "micro" and r["budget"] == 10:
            by_seed.setdefault(r["seed"], {})[r["attribute"]] = (r["accuracy"], r["pairs"])
    per_seed = [np.mean([acc for acc, _ in attrs.values()]) for attrs in by_seed.values()]
    assert adapted["summary"]["10"]["micro"]["Average"]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    # unequal attributes: the per-attribute mean differs from a pooled (pair-weighted) one and from a max
    records = [{"budget": 5, "seed": 0, "method": "micro", "attribute": "a", "accuracy": 1.0, "pairs": 90},
               {"budget": 5, "seed": 0, "method": "micro", "attribute": "b", "accuracy": 0.0, "pairs": 10}]
    assert summarise(records, ["a", "b"])["5"]["micro"]["Average"]["mean"] == 0.5


def test_tau_changes_the_soft_labels_and_the_result(sim, monkeypatch, tmp_path):
    cache, run, _ = sim
    calls = _spy_adapt(monkeypatch)
    results = {tau: run_adapt(cache, run, tmp_path / str(tau), AdaptConfig(budgets=[10], tau=tau, methods=["default", "-baselines"], **SMALL))
               for tau in (1e-3, 10.0)}
    assert [c["tau"] for c in calls] == [1e-3, 10.0]
    prior = torch.log_softmax(torch.zeros(calls[0]["losses"].shape), -1)
    labels = {tau: soft_labels(prior, calls[0]["losses"], tau).exp() for tau in (1e-3, 10.0)}
    assert labels[1e-3].max(-1).values.mean() > labels[10.0].max(-1).values.mean() + 0.1  # sharper at small tau
    micro = {tau: [r["accuracy"] for r in res["records"] if r["method"] == "micro"] for tau, res in results.items()}
    assert micro[1e-3] != micro[10.0]


def test_the_seed_changes_budget_draws_batch_order_and_hyre_shots(sim, monkeypatch, tmp_path):
    cache, run, _ = sim
    calls = _spy_adapt(monkeypatch)
    res = [run_adapt(cache, run, tmp_path / str(s), AdaptConfig(budgets=[10], seeds=1, seed=s, methods=["default", "-baselines"]),
                     save_routers=False) for s in (0, 1)]
    assert calls[0]["seeds"] == [0] and calls[1]["seeds"] == [1]  # the batch order of each router follows its seed
    assert not torch.equal(calls[0]["inputs"], calls[1]["inputs"])  # the budget draws follow the seed
    hyre = [[r["accuracy"] for r in x["records"] if r["method"] == "micro-hyre"] for x in res]
    shots = [draw_shots(load_split(cache, "test"), s, 16) for s in (0, 1)]
    assert any(not np.array_equal(shots[0][a], shots[1][a]) for a in shots[0])
    assert hyre[0] != hyre[1]  # the HyRe shots follow the seed


def test_cross_dataset_baselines_come_from_the_stage1_data_or_are_refused(sim, tmp_path):
    cache, _, root = sim
    stage1 = tmp_path / "stage1.h5"
    shutil.copy(cache, stage1)
    run = tmp_path / "run"
    run_fit_mixture(stage1, run, MixtureConfig(k=3, epochs=1))
    other = tmp_path / "adapt.h5"
    simulate(other, groups=3, dim=16, pairs=600, seed=0)  # same backbone, another table: not the stage-1 data
    with pytest.raises(CacheError, match="--cross-dataset"):
        run_adapt(other, run, tmp_path / "a", AdaptConfig(budgets=[5], **SMALL))
    res = run_adapt(other, run, tmp_path / "a", AdaptConfig(budgets=[5], cross_dataset=True, **SMALL), log=print)
    assert "single" in res["methods"]  # fitted on stage1.h5, which is still there
    stage1.unlink()
    with pytest.raises(CacheError, match="stage-1 data.*--baselines DIR"):
        run_adapt(other, run, tmp_path / "b", AdaptConfig(budgets=[5], cross_dataset=True, **SMALL))
    res = run_adapt(other, run, tmp_path / "c", AdaptConfig(budgets=[5], baseline_runs=[], methods=["default", "-baselines"], cross_dataset=True, **SMALL))
    assert "single" not in res["methods"]


def test_paper_presets_follow_the_cache_dataset():
    hs2 = {"attributes": ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]}
    rpr = {"attributes": sorted(paper.RPR_ATTRIBUTES)}
    assert paper.choose(hs2)[1].k == 5 and paper.choose(hs2)[1].tau == 1e-3
    assert paper.choose(rpr)[1].k == 10 and paper.choose(rpr)[1].tau == 1e-4
    assert paper.choose(rpr, cross_dataset=True)[0] == "cross-dataset" and paper.choose(rpr, cross_dataset=True)[1].tau == 1e-3
    name, chosen, note = paper.choose(hs2, "rpr")
    assert (name, chosen.tau) == ("rpr", 1e-4) and "given" in note
    with pytest.raises(ValueError, match="--paper-dataset 'nope'"):
        paper.choose(hs2, "nope")


def test_paper_adapt_config_takes_the_tau_of_the_preset(sim):
    cache, run, _ = sim
    config, note = paper_adapt_config(cache, run, dataset="rpr")
    assert config.tau == 1e-4 and config.head_input == "auto" and "rpr" in note
    config, note = paper_adapt_config(cache, run)
    assert config.tau == 1e-3 and "'other'" in note
    assert paper_adapt_config(cache, run, dataset="rpr", tau=0.5)[0].tau == 0.5  # a flag beats the preset
