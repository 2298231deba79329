"""Stage 2 on simulated caches: the paper's claims (section 5.3, Figure 4) and the sweep's outputs.

Most claims here are about stage 2, so they start from a *planted* stage 1: heads = the simulation's
group directions (at its reward scale) plus 7 random distractor heads of the same norm, and an untrained
router; that isolates the router adaptation from how well stage 1 separated the groups. The 'shared'
regime test uses a real stage-1 fit (the paper's: prompt router, per-example balance).

tau: the simulation's heads have margins of a few units, so per-pair BT losses differ by O(1) and tau=1
(not the paper's 1e-3, set for GRM heads) is the scale where eq. 6 reweights instead of one-hot-ing each
pair onto its largest-margin head (tau=1e-3 gave 0.67 at B = 50, tau=1 0.86; see router/config.py).
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, bayes_accuracy, fit_mixture, simulate
from micro.heads.model import MixtureRewardModel, save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, BudgetError, hyre_weights, load_adapted, run_adapt
from micro.router.sweep import draw_shots

K = 10


def _planted_run(cache, truth, run_dir, seed=1):
    d = truth.directions.shape[1]
    gen = torch.Generator().manual_seed(seed)
    extra = torch.randn(K - truth.groups, d, generator=gen)
    heads = torch.cat([torch.tensor(truth.directions, dtype=torch.float32), extra / extra.norm(dim=1, keepdim=True)])
    model = MixtureRewardModel(d, K, weights="router", seed=seed)
    with torch.no_grad():
        model.heads.copy_(heads * truth.scale)
    cfg = MixtureConfig(k=K, epochs=1, seed=0)  # epochs: only the baselines fitted from it use it
    save_model(model, run_dir, {"config": cfg.to_dict(), "cache": cache_identity(read_meta(cache), cache)})
    return run_dir


@pytest.fixture(scope="module")
def prompt_sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_prompt")
    cache = root / "sim.h5"
    truth = simulate(cache, regime="prompt", seed=0)
    run = _planted_run(cache, truth, root / "runs" / "micro")
    out = root / "out"
    results = run_adapt(cache, run, out, AdaptConfig(budgets=[10, 50], seeds=3, tau=1.0))
    return cache, truth, run, out, results


def _avg(results, budget, method):
    return results["summary"][str(budget)][method]["Average"]["mean"]


def test_routed_accuracy_with_context_rises_with_budget_and_reaches_bayes(prompt_sim):
    cache, truth, _, _, results = prompt_sim
    bayes = bayes_accuracy(truth, load_split(cache, "test"), with_context=True, realised=True)
    low, high = _avg(results, 10, "micro"), _avg(results, 50, "micro")
    assert low < high, (low, high)
    assert high >= bayes - 0.02, f"micro at B=50: {high:.4f}, Bayes with context {bayes:.4f}"


def test_hyre_picks_the_right_groups_head_from_16_shots(prompt_sim):
    cache, truth, run, _, _ = prompt_sim
    test = load_split(cache, "test")
    model = load_adapted(run, next((prompt_sim[3] / "routers").glob("*.safetensors"))).heads_model
    margins = model.head_margins(test.diff)
    for seed in range(3):
        for group, rows in draw_shots(test, seed, 16).items():
            assert len(rows) == 16
            assert int(hyre_weights(margins[rows]).argmax()) == group  # head g is group g's direction


def test_micro_refine_is_near_oracle_in_the_prompt_regime(prompt_sim):
    results = prompt_sim[4]
    refine, oracle = _avg(results, 50, "micro-refine"), _avg(results, 50, "oracle")
    assert refine >= oracle - 0.02, (refine, oracle)
    assert refine >= max(_avg(results, 50, "micro"), _avg(results, 50, "budget-bt")) - 0.02


def test_results_files_have_the_tidy_columns_methods_and_routers(prompt_sim):
    cache, _, run, out, results = prompt_sim
    df = pd.read_csv(out / "results.csv")
    assert {"budget", "seed", "attribute", "method", "accuracy"} <= set(df.columns)
    assert set(df["method"]) == {"micro", "single", "static", "ensemble-best", "stage1-best", "hyre", "micro-hyre",
                                 "budget-bt", "oracle", "micro-refine"}
    assert set(df["budget"]) == {10, 50} and set(df["seed"]) == {0, 1, 2} and set(df["attribute"]) == {"group0", "group1", "group2"}
    # budget-free methods are repeated per budget with identical values
    single = df[df.method == "single"].pivot_table(index=["seed", "attribute"], columns="budget", values="accuracy")
    assert np.allclose(single[10], single[50])
    table = (out / "table.md").read_text()
    assert "| Method | group0 | group1 | group2 | Average |" in table and "MiCRo (B = 50)" in table and " ± " in table
    assert (out / "budget_curve.png").stat().st_size > 0 and (out / "results.json").exists()
    for b in (10, 50):
        for s in range(3):
            assert (out / "routers" / f"b{b}_s{s}.safetensors").exists() and (out / "routers" / f"b{b}_s{s}.json").exists()
    # the saved router + the scoring API reproduce the sweep's accuracy for seed 0, B = 50
    test = load_split(cache, "test")
    prm = load_adapted(run, out / "routers" / "b50_s0.safetensors")
    correct = (prm.score(test.diff, torch.zeros_like(test.diff), test.context_inputs()) > 0).numpy()
    shots = draw_shots(test, 0, 16)
    for a, name in enumerate(test.attributes):
        mask = test.attribute.numpy() == a
        mask[shots[a]] = False
        row = df[(df.method == "micro") & (df.budget == 50) & (df.seed == 0) & (df.attribute == name)]
        assert math.isclose(float(row.accuracy.iloc[0]), float(correct[mask].mean()), abs_tol=1e-9)


def test_budget_larger_than_an_attributes_train_pairs_is_refused(prompt_sim, tmp_path):
    cache, _, run, _, _ = prompt_sim
    counts = np.bincount(load_split(cache, "train").attribute.numpy())
    with pytest.raises(BudgetError, match=r"budget 5000 .* \d+ training pairs of attribute 'group\d'"):
        run_adapt(cache, run, tmp_path / "o", AdaptConfig(budgets=[10, 5000], seeds=1, baselines=False))
    assert counts.max() < 5000


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_shared")
    cache = root / "sim.h5"
    truth = simulate(cache, regime="shared", seed=0)
    cfg = MixtureConfig(k=K, seed=0)  # the paper's stage 1: prompt router, per-example balance (eq. 4)
    model = fit_mixture(load_split(cache, "train"), cfg)
    run = root / "runs" / "micro"
    save_model(model, run, {"config": cfg.to_dict(), "cache": cache_identity(read_meta(cache), cache)})
    results = run_adapt(cache, run, root / "out", AdaptConfig(budgets=[50], seeds=3, tau=1.0, baselines=False))
    return cache, truth, results


def test_shared_regime_stage1_leaves_micro_no_groups_to_route(shared_sim):
    """The limit: when the prompt says nothing about the group, stage 1's heads do not separate the groups,
    so the adapted router can only pick among unspecialised heads. Measured: micro ~0.66 (the heads'
    shared average direction: cos ~0.58 with each group's), never near the 0.88 of the group's own rule."""
    cache, truth, results = shared_sim
    bayes = bayes_accuracy(truth, load_split(cache, "test"), with_context=True, realised=True)
    micro, best_head = _avg(results, 50, "micro"), _avg(results, 50, "stage1-best")
    assert micro < bayes - 0.15, (micro, bayes)
    assert micro <= best_head + 0.01  # routing cannot beat the best available head


def test_shared_regime_micro_refine_is_no_worse_than_its_ingredients(shared_sim):
    results = shared_sim[2]
    refine = _avg(results, 50, "micro-refine")
    assert refine >= max(_avg(results, 50, "micro"), _avg(results, 50, "budget-bt")) - 0.02


@pytest.mark.xfail(strict=True, reason="50 pairs/group in 64 dims cannot recover a group's direction when stage 1 "
                   "carries none of it: measured micro-refine 0.70 vs oracle 0.88 (B = 100: 0.75)")
def test_shared_regime_micro_refine_near_oracle(shared_sim):
    results = shared_sim[2]
    assert _avg(results, 50, "micro-refine") >= _avg(results, 50, "oracle") - 0.02
