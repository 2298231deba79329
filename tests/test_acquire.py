"""Active acquisition (micro.router.acquire): nested sequences, the rules' picks on hand cases, the pool,
reproducibility."""

import math

import numpy as np
import pytest
import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, run_fit_mixture, simulate
from micro.router import AdaptConfig, run_adapt
from micro.router.acquire import acquire_pairs, bald, disagreement, uncertainty
from micro.router.draws import attribute_rows, draw_budget_pairs


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    path = tmp_path_factory.mktemp("acq") / "s.h5"
    simulate(path, groups=3, dim=8, pairs=900, seed=0)
    return load_split(path, "train")


def _fixed(rule, weights, margins, calls):
    """Informativeness from fixed [n, K] weights and margins; records the asked pairs and the scored rows."""
    def info(draws):
        calls.append({"asked": [{a: v.copy() for a, v in d.items()} for d in draws], "scored": []})
        def scorer(rows):
            calls[-1]["scored"].append(rows.copy())
            return rule(weights[rows], margins[rows])
        return [scorer for _ in draws]
    return info


def _random_model(n, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=gen), -1), 3 * torch.randn(n, k, generator=gen)


@pytest.mark.parametrize("rule", [uncertainty, disagreement, bald])
def test_budgets_are_prefixes_of_one_sequence_per_seed(train, rule):
    weights, margins = _random_model(len(train))
    calls: list = []
    asked = acquire_pairs(rule.__name__, train, [0, 1], [5, 12, 20], 5, 0.0, _fixed(rule, weights, margins, calls))
    assert len(calls) == 3  # one sequence: rounds at 5, 10, 15 asked pairs (20 = the largest budget)
    rows = attribute_rows(train)
    for i, seed in enumerate([0, 1]):
        for a in rows:
            np.testing.assert_array_equal(asked[5][i][a], draw_budget_pairs(train, seed, 5)[a])  # the seeded first batch
            np.testing.assert_array_equal(asked[12][i][a], asked[20][i][a][:12])
            np.testing.assert_array_equal(asked[5][i][a], asked[20][i][a][:5])
            assert len(set(asked[20][i][a].tolist())) == 20


def test_each_round_asks_the_rules_best_pool_pairs_and_only_train_pairs(train):
    weights, margins = _random_model(len(train))
    calls: list = []
    asked = acquire_pairs("uncertainty", train, [0, 1], [17], 5, 0.0, _fixed(uncertainty, weights, margins, calls))
    rows = attribute_rows(train)
    for call in calls:  # the pool: the attribute's train rows not asked yet, never a test row
        for i in range(2):
            for a, scored in zip(rows, call["scored"][3 * i:3 * i + 3]):
                assert set(scored.tolist()) == set(rows[a].tolist()) - set(call["asked"][i][a].tolist())
    for i in range(2):
        for a in rows:
            got = asked[17][i][a]
            assert set(got.tolist()) <= set(rows[a].tolist())
            pool = np.setdiff1d(rows[a], got[:5])
            routed = (weights[pool] * margins[pool]).sum(-1).abs().numpy()
            assert set(got[5:10].tolist()) == set(pool[np.argsort(routed)[:5]].tolist())
    again = acquire_pairs("uncertainty", train, [0, 1], [17], 5, 0.0, _fixed(uncertainty, weights, margins, []))
    assert all(np.array_equal(asked[17][i][a], again[17][i][a]) for i in range(2) for a in rows)  # reproducible
    assert any(not np.array_equal(asked[17][0][a], asked[17][1][a]) for a in rows)  # seeds differ
    test = load_split(train.path, "test")
    with pytest.raises(ValueError, match="train split"):
        acquire_pairs("uncertainty", test, [0], [10], 5, 0.0, lambda d: [])


def test_random_share_one_is_the_random_draw_and_a_half_share_mixes(train):
    weights, margins = _random_model(len(train))
    rows = attribute_rows(train)
    every = acquire_pairs("bald", train, [3], [5, 25], 5, 1.0, _fixed(bald, weights, margins, []))
    plain = acquire_pairs("random", train, [3], [5, 25], 5, 0.5)
    for b in (5, 25):
        for a in rows:
            np.testing.assert_array_equal(every[b][0][a], draw_budget_pairs(train, 3, b)[a])
            np.testing.assert_array_equal(plain[b][0][a], draw_budget_pairs(train, 3, b)[a])
    half = acquire_pairs("bald", train, [3], [10], 5, 0.5, _fixed(bald, weights, margins, []))
    for a in rows:  # round 2: the next 2 of the random order, then bald's best 3 of the rest
        order = draw_budget_pairs(train, 3, len(rows[a]))[a]
        np.testing.assert_array_equal(half[10][0][a][5:7], order[5:7])
        rest = order[7:]
        np.testing.assert_array_equal(np.sort(half[10][0][a][7:]), np.sort(rest[np.argsort(-bald(weights[rest], margins[rest]).numpy(), kind="stable")[:3]]))
    with pytest.raises(ValueError, match="random share"):
        acquire_pairs("bald", train, [0], [10], 5, 2.0, lambda d: [])


def test_the_random_mask_marks_the_pairs_from_the_random_order(train):
    weights, margins = _random_model(len(train))
    rows = attribute_rows(train)
    half, at_random = acquire_pairs("bald", train, [3], [10, 20], 5, 0.4, _fixed(bald, weights, margins, []), with_random_mask=True)
    plain, all_random = acquire_pairs("random", train, [3], [20], 5, 0.4, with_random_mask=True)
    for a in rows:
        order = draw_budget_pairs(train, 3, len(rows[a]))[a]
        mask = at_random[20][0][a]  # the first batch, then 2 of each round of 5 from the random order
        np.testing.assert_array_equal(mask, [True] * 5 + [True, True, False, False, False] * 3)
        np.testing.assert_array_equal(at_random[10][0][a], mask[:10])
        drawn = half[20][0][a][mask]  # the random order, skipping rows a rule had already asked for
        np.testing.assert_array_equal(drawn[:7], order[:7])
        position = {r: i for i, r in enumerate(order)}
        assert np.all(np.diff([position[r] for r in drawn]) > 0)
        asked = set(half[20][0][a][~mask])
        assert all(r in asked for r in order[: position[drawn[-1]]] if r not in set(drawn))
        assert all_random[20][0][a].all() and len(plain[20][0][a]) == 20


def test_bald_asks_the_pair_that_separates_the_two_likely_heads():
    # Heads 0 and 1 carry the router's mass, head 2 almost none. Pair 0: heads 0 and 1 agree, only the
    # unlikely head 2 dissents; pair 1: heads 0 and 1 disagree confidently; pair 2: every head is unsure
    # (a near-zero routed margin, what 'uncertainty' asks for, though its label says nothing about which
    # head is right).
    weights = torch.tensor([[0.49, 0.49, 0.02]]).repeat(3, 1)
    margins = torch.tensor([[4.0, 4.0, -4.0], [4.0, -4.0, 4.0], [0.05, -0.05, 0.05]])
    score = bald(weights, margins)
    assert int(score.argmax()) == 1
    assert int(uncertainty(weights, margins).argmax()) == 2
    assert float(score[2]) < 1e-3 and float(score[0]) < 0.1
    # the formula: H(mixed probability) - mixed entropy of the heads' probabilities
    p = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64))
    h = lambda q: float(-(q * torch.log(q) + (1 - q) * torch.log(1 - q)))
    mix = 0.49 * p + 0.49 * (1 - p) + 0.02 * p
    assert float(score[1]) == pytest.approx(h(mix) - h(p), rel=1e-6)  # weights are float32
    assert float(bald(torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, -3.0]]))) == pytest.approx(0.0, abs=1e-12)
    assert float(bald(torch.tensor([[0.5, 0.5]]), torch.tensor([[80.0, -80.0]]))) == pytest.approx(math.log(2))


@pytest.mark.slow
def test_a_seeded_active_run_is_reproducible(tmp_path):
    cache = tmp_path / "s.h5"
    simulate(cache, groups=3, dim=8, pairs=600, seed=0)
    run_fit_mixture(cache, tmp_path / "run", MixtureConfig(k=3, epochs=2))
    cfg = dict(budgets=[5, 10], seeds=2, epochs=2, methods=["default", "-baselines", "peers"], acquire="bald",
               options={"acquire": {"random": 0.4}, "lore": {"steps": 20}, "drm": {"components": 2}})
    first = run_adapt(cache, tmp_path / "run", tmp_path / "a", AdaptConfig(**cfg))
    again = run_adapt(cache, tmp_path / "run", tmp_path / "b", AdaptConfig(**cfg))
    assert first["records"] == again["records"] and first["run_id"] == again["run_id"]
    assert {r["acquire"] for r in first["records"]} == {"bald"}
