"""Stage 2 on simulated caches: the paper's claims (section 5.3, Figure 4), the defaults beyond the paper,
and the sweep's outputs. Every test names the configs it uses (MixtureConfig.paper(...) / MixtureConfig(...),
AdaptConfig.paper(...) / AdaptConfig(tau=...)), so a change of defaults cannot silently change a claim.

Two kinds of stage 1:
- *planted* (the paper-claims tests): heads = the simulation's group directions (at its reward scale) plus
  7 random distractor heads of the same norm, and an untrained router; that isolates the router adaptation
  from how well stage 1 separated the groups. Stage 2 there uses AdaptConfig(tau=1.0): the simulation's
  heads have margins of a few units, so per-pair BT losses differ by O(1) and tau=1 (not the paper's 1e-3,
  set for GRM heads) is the scale where eq. 6 reweights instead of one-hot-ing each pair onto its
  largest-margin head (tau=1e-3 gave 0.67 at B = 50, tau=1 0.86; see router/config.py).
- *real* fits, in both regimes of `simulate` ('prompt': the prompt hints at the group; 'shared': the same
  pairs labeled by every group, groups that conflict), with the default configs (MixtureConfig(),
  AdaptConfig(): context + prompt router with batch balance, tau 1) and the paper's (MixtureConfig.paper(),
  AdaptConfig.paper(): prompt router, eq. 4's per-example entropy, tau 1e-3).
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from micro.embedcache import load_split, read_meta
from micro.heads import MixtureConfig, bayes_accuracy, fit_mixture, match_heads, simulate
from micro.heads.model import MixtureRewardModel, save_model
from micro.heads.run import cache_identity
from micro.router import AdaptConfig, BudgetError, hyre_weights, load_adapted, run_adapt
from micro.router.draws import draw_shots



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread while this module runs (batch-32 steps gain nothing from a second), set here and not
    at import: a module-level call is overridden by whichever test module pytest imports last, and the
    claims below are measured with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
K = 10


def _planted_run(cache, truth, run_dir, seed=1):
    d = truth.directions.shape[1]
    gen = torch.Generator().manual_seed(seed)
    extra = torch.randn(K - truth.groups, d, generator=gen)
    heads = torch.cat([torch.tensor(truth.directions, dtype=torch.float32), extra / extra.norm(dim=1, keepdim=True)])
    model = MixtureRewardModel(d, K, weights="router", seed=seed)
    with torch.no_grad():
        model.heads.copy_(heads * truth.scale)
    # only the single/static/ensemble baselines fitted from it read this config (none has a router)
    cfg = MixtureConfig.paper(k=K, epochs=1, seed=0)
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
                                 "budget-bt", "oracle", "micro-refine"}  # the default methods: the peers only on request
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
    # the saved router + each context's log-weights + the scoring API reproduce the sweep's accuracy (seed 0, B = 50)
    test = load_split(cache, "test")
    for a, name in enumerate(test.attributes):
        prm = load_adapted(run, out / "routers" / "b50_s0.safetensors", attribute=name, refined=False)
        correct = (prm.score(test.diff, torch.zeros_like(test.diff), test.context_inputs()) > 0).numpy()
        mask = test.attribute.numpy() == a  # MiCRo is scored on all test pairs (only HyRe loses its shots)
        row = df[(df.method == "micro") & (df.budget == 50) & (df.seed == 0) & (df.attribute == name)]
        assert math.isclose(float(row.accuracy.iloc[0]), float(correct[mask].mean()), abs_tol=1e-9)


def test_budget_larger_than_an_attributes_train_pairs_is_refused(prompt_sim, tmp_path):
    cache, _, run, _, _ = prompt_sim
    counts = np.bincount(load_split(cache, "train").attribute.numpy())
    with pytest.raises(BudgetError, match=r"budget 5000 .* \d+ training pairs of attribute 'group\d'"):
        run_adapt(cache, run, tmp_path / "o", AdaptConfig(budgets=[10, 5000], seeds=1, methods=["default", "-baselines"]))
    assert counts.max() < 5000


# ------------------------------------------------------------------------------------------------
# real stage-1 fits in both regimes: the defaults vs the paper's configs
# ------------------------------------------------------------------------------------------------
REGIMES = ("prompt", "shared")
SWEEP = dict(budgets=[50], seeds=3, methods=["default", "-baselines"])  # what is scored, not how


def _configs(which):
    if which == "default":
        stage1, stage2 = MixtureConfig(), AdaptConfig(**SWEEP)
        # the defaults these claims are about; if they change, re-measure and restate the claims
        assert (stage1.k, stage1.router_input, stage1.balance, stage2.tau) == (K, "auto", "batch", 1.0)
    else:
        stage1, stage2 = MixtureConfig.paper(), AdaptConfig.paper(**SWEEP)
        assert (stage1.k, stage1.router_input, stage1.balance, stage2.tau) == (K, "prompt", "example", 1e-3)
    return stage1, stage2


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """real(regime, "default" | "paper") -> (cache, truth, stage-1 model, run_adapt results); each regime's
    cache (18K pairs, d = 64, G = 3, seed 0) and each fit are made once, on first use."""
    root = tmp_path_factory.mktemp("adapt_real")
    caches, fits = {}, {}

    def get(regime, which):
        if regime not in caches:
            caches[regime] = (root / f"{regime}.h5", simulate(root / f"{regime}.h5", regime=regime, pairs=18000, seed=0))
        cache, truth = caches[regime]
        if (regime, which) not in fits:
            stage1, stage2 = _configs(which)
            model = fit_mixture(load_split(cache, "train"), stage1)
            run = root / "runs" / f"{regime}_{which}"
            save_model(model, run, {"config": stage1.to_dict(), "cache": cache_identity(read_meta(cache), cache)})
            fits[regime, which] = model, run_adapt(cache, run, root / f"out_{regime}_{which}", stage2)
        return (cache, truth, *fits[regime, which])

    return get


@pytest.mark.parametrize("regime", REGIMES)
def test_default_stage1_recovers_the_planted_groups(real, regime):
    """MixtureConfig() resolves to the (context + prompt) router with batch balance on these caches; 3 of its
    10 heads match the planted directions (measured cosine 0.99 in both regimes)."""
    _, truth, model, _ = real(regime, "default")
    assert min(match_heads(truth, model.head_vectors())["cosine"]) >= 0.9


@pytest.mark.parametrize("regime", REGIMES)
def test_default_micro_and_micro_refine_reach_oracle(real, regime):
    """MixtureConfig() + AdaptConfig() at B = 50/group: micro and micro-refine within 2 points of the oracle
    head fitted on all of a group's training pairs. Measured (3 seeds): prompt 0.870 / 0.868 vs oracle 0.870;
    shared 0.874 / 0.868 vs 0.876."""
    _, _, _, results = real(regime, "default")
    oracle = _avg(results, 50, "oracle")
    assert _avg(results, 50, "micro-refine") >= oracle - 0.02, (_avg(results, 50, "micro-refine"), oracle)
    assert _avg(results, 50, "micro") >= oracle - 0.02, (_avg(results, 50, "micro"), oracle)


def test_paper_micro_stays_near_chance_with_conflicting_groups(real):
    """The limit of the paper's stage 1 (MixtureConfig.paper() + AdaptConfig.paper()) in the 'shared' regime:
    the prompt says nothing about the group, so stage 1's heads do not separate the groups (cosine <= 0.3
    measured) and the adapted router can only pick among unspecialised heads whose average conflicts with
    every group. Measured: micro 0.505 after stage 2, best stage-1 head 0.553, Bayes with context 0.877."""
    cache, truth, model, results = real("shared", "paper")
    bayes = bayes_accuracy(truth, load_split(cache, "test"), with_context=True, realised=True)
    micro, best_head = _avg(results, 50, "micro"), _avg(results, 50, "stage1-best")
    assert max(match_heads(truth, model.head_vectors())["cosine"]) < 0.5
    assert micro <= 0.6 and best_head <= 0.6, (micro, best_head)
    assert micro < bayes - 0.25, (micro, bayes)
    assert micro <= best_head + 0.01  # routing cannot beat the best available head


def test_paper_micro_is_flattened_by_eq4_in_the_prompt_regime(real):
    """In the paper's own regime the paper's configs do better than chance but eq. 4 at alpha 0.5 keeps the
    stage-1 router uniform, so the heads only half specialise (cosine 0.54-0.73) and stage 2 cannot reach
    the oracle. Measured: micro 0.768 (0.650 before the stage-1 rewrite changed the fit's seeds), oracle 0.871
    (the defaults: 0.870)."""
    _, _, _, results = real("prompt", "paper")
    micro, oracle = _avg(results, 50, "micro"), _avg(results, 50, "oracle")
    assert 0.55 < micro < oracle - 0.1, (micro, oracle)


_PAPER_REFINE = ("the paper's stage 1 gives micro-refine a poor prior (heads half specialised in 'prompt', not at all in "
                 "'shared') and 50 pairs/group in 64 dims cannot make up for it")


@pytest.mark.parametrize("which, regime", [
    ("default", "prompt"), ("default", "shared"),
    pytest.param("paper", "prompt", marks=pytest.mark.xfail(strict=True, reason=f"{_PAPER_REFINE}: measured micro-refine 0.696 vs oracle 0.870")),
    pytest.param("paper", "shared", marks=pytest.mark.xfail(strict=True, reason=f"{_PAPER_REFINE}: measured micro-refine 0.601 vs oracle 0.876")),
])
def test_micro_refine_near_oracle(real, which, regime):
    results = real(regime, which)[3]
    assert _avg(results, 50, "micro-refine") >= _avg(results, 50, "oracle") - 0.02


@pytest.mark.parametrize("which, regime", [("default", "prompt"), ("default", "shared"), ("paper", "prompt"), ("paper", "shared")])
def test_micro_refine_is_no_worse_than_its_ingredients(real, which, regime):
    """micro-refine does not fall clearly below the better of micro and budget-bt: it keeps the routed
    prior unless the budget pairs clearly reject it, and then fits the head with or without it.
    (paper/shared was a strict xfail while stage 1 ran a fixed 4 epochs: micro-refine 0.657 vs budget-bt
    0.681, a prior that was pure noise for every group. Stage 1 trained to convergence on the held-out
    slice gives micro-refine a prior the budget pairs reject or keep cleanly, and the claim holds there too.)"""
    results = real(regime, which)[3]
    refine = _avg(results, 50, "micro-refine")
    assert refine >= max(_avg(results, 50, "micro"), _avg(results, 50, "budget-bt")) - 0.02
