"""Small caches are fitted by cross-validation over prompts (heads/fit.py): the folds, the choice of the
start on the pooled folds, the refit's length from the folds' best steps, the gain on a planted
600-pair cache where one held-out slice of ~48 pairs chooses a poor start, and the choice of the router
regulariser's weight (`alpha_alternatives`) on the pooled folds."""

import numpy as np
import pytest
import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, fit_mixture, match_heads, simulate
from micro.heads.fit import prompt_folds, uses_folds

torch.set_num_threads(1)


def planted_600(factory, regime: str, seed: int):
    """(truth, train split) of a 600-pair planted cache, d = 64, 3 groups."""
    path = factory.mktemp("folds") / f"{regime}{seed}.h5"
    return simulate(path, regime=regime, pairs=600, dim=64, seed=seed), load_split(path, "train")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Prompt regime, cache seed 0: one slice keeps a poor usual start."""
    return planted_600(tmp_path_factory, "prompt", 0)


def test_prompt_folds_hold_out_every_pair_once_and_never_split_a_prompt(planted):
    _, train = planted
    folds = prompt_folds(train, 5, seed=3)
    rows = torch.cat(folds)
    assert len(folds) == 5 and sorted(rows.tolist()) == list(range(len(train)))
    prompt = train.prompt_index.numpy()
    owners = [set(prompt[f.numpy()]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
    largest = int(np.unique(prompt, return_counts=True)[1].max())
    assert all(abs(len(f) - len(train) / 5) <= largest for f in folds)  # about equal pair counts
    assert [f.tolist() for f in prompt_folds(train, 5, seed=3)] == [f.tolist() for f in folds]  # seeded
    assert [f.tolist() for f in prompt_folds(train, 5, seed=4)] != [f.tolist() for f in folds]


def test_only_small_caches_are_cross_validated(planted, tmp_path):
    _, train = planted
    assert uses_folds(train, MixtureConfig()) and not uses_folds(train, MixtureConfig(folds=1))
    for other in (dict(epochs=4), dict(method="single"), dict(refit=False), dict(refit_warm=0.5), dict(folds_below=40)):
        assert not uses_folds(train, MixtureConfig(**other)), other
    path = tmp_path / "c5k.h5"
    simulate(path, regime="prompt", pairs=5200, dim=8, seed=0)
    assert not uses_folds(load_split(path, "train"), MixtureConfig())  # a held-out slice of ~416 pairs
    with pytest.raises(ValueError, match="folds"):
        MixtureConfig(folds=0)


def test_the_folds_choose_the_start_and_the_refit_length(planted, monkeypatch):
    """The record of a cross-validated fit: every training pair held out once, the start chosen on the
    pooled per-pair values (a near-zero start only with a lead of `scale_choice_z` standard errors), the
    refit trained from that start for the mean of the folds' best steps scaled to all pairs."""
    import micro.heads.train as train_module

    _, train = planted
    built = []
    real = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda config, *a, **k: built.append((config.seed, config.head_init)) or real(config, *a, **k))
    model = fit_mixture(train, MixtureConfig(seed=0, alpha_alternatives=()))
    rec, n = model.fit_record, len(train)
    assert rec.folds == 5 and rec.heldout_pairs == n and len(rec.fold_best_steps) == 5 and len(rec.restart_nll) == 8
    folds = prompt_folds(train, 5, seed=0)
    scaled = [s * n / (n - len(f)) for s, f in zip(rec.fold_best_steps, folds)]
    assert rec.refit_steps == max(1, round(np.mean(scaled)))
    assert built[-1] == (7919 * rec.chosen_restart, (rec.head_init,))  # the refit starts as the chosen start
    assert built[-6:-1] == [built[-1]] * 5  # ... and each fold's search trained it alone
    lowest = int(np.argmin(rec.restart_nll))
    usual = int(np.argmin(rec.restart_nll[:4]))
    assert rec.chosen_restart == (lowest if rec.start_z is None or rec.start_z >= 1.0 else usual)
    assert model.train_steps == rec.steps + rec.refit_steps and rec.steps >= 5 * min(rec.fold_best_steps)


def test_cross_validation_recovers_the_planted_heads_one_slice_misses(planted):
    """Planted 600-pair cache: the ~48-pair slice keeps a usual start (head cos ~0.55); the pooled folds keep
    a start near zero, much nearer the planted directions."""
    truth, train = planted
    one = fit_mixture(train, MixtureConfig(seed=0, folds=1))
    five = fit_mixture(train, MixtureConfig(seed=0))
    cos = [float(np.mean(match_heads(truth, m.head_vectors())["cosine"])) for m in (one, five)]
    assert (one.fit_record.head_init, five.fit_record.head_init) == (1.0, 0.01)
    assert cos[1] > cos[0] + 0.08, cos


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """'shared' regime, cache seed 1."""
    return planted_600(tmp_path_factory, "shared", 1)


def test_the_folds_choose_the_regulariser_weight(shared):
    """With alpha 0.5 the batch balance keeps all 10 heads in use, so each of the 3 groups is spread over ~3
    heads; the folds' pooled held-out values prefer the search without it (alpha 0, well past the bar),
    whose router gives each group one head, nearer its planted direction. With a bar no alternative can
    clear, alpha stays."""
    truth, train = shared
    chosen = fit_mixture(train, MixtureConfig(seed=1))
    only = fit_mixture(train, MixtureConfig(seed=1, alpha_alternatives=()))
    rec = chosen.fit_record
    assert rec.alpha == 0.0 and len(rec.alpha_nll) == 2 and rec.alpha_nll[1] < rec.alpha_nll[0] and rec.alpha_z >= 1.0
    assert (only.fit_record.alpha, len(only.fit_record.alpha_nll), only.fit_record.alpha_z) == (0.5, 1, None)
    cos = [float(np.mean(match_heads(truth, m.head_vectors())["cosine"])) for m in (chosen, only)]
    assert cos[0] > cos[1] + 0.05, cos
    with torch.no_grad():
        top = [[float(m.log_weights(train.context_inputs()[train.attribute == g]).exp().mean(0).max()) for g in range(3)] for m in (chosen, only)]
    assert min(top[0]) > 0.9 and max(top[1]) < 0.5, top
    strict = fit_mixture(train, MixtureConfig(seed=1, scale_choice_z=1e6)).fit_record
    assert strict.alpha == 0.5 and strict.alpha_z is not None and strict.alpha_z < 1e6
    assert MixtureConfig.paper().alpha_alternatives == ()
    with pytest.raises(ValueError, match="alpha_alternatives"):
        MixtureConfig(alpha_alternatives=(-1.0,))
