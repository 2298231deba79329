"""Stage 1 as an estimator plus a selector: the hand-written stacked step against autograd (masks and
mixed regulariser weights included), the held-out prompts and folds, the criteria, the one selection rule
and successive halving, early stopping at the later plateau, the refit, the cost record, threads, and the
removed options' one-line errors."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, match_heads, simulate
from micro.heads.config import auto_batch_size
from micro.heads.criteria import CALIBRATION_SCALES, _nll_at, best_scale, mixture_pair_nll, pair_values, paired_z
from micro.heads.search import FOLDS, HOLDOUT, HOLDOUT_MAX, SELECT_Z, Candidate, candidates, halve, select
from micro.heads.losses import mixture_nll, per_head_bt, weight_regulariser
from micro.heads.baselines import HeadTrainer
from micro.heads.stack import FlatAdamW, MicroStack
from micro.embedcache.rows import DeviceSplit, heldout_rows, prompt_folds
from micro.heads.train import build_model, lr_factor, step_plan


def grid_nll(log_weights, margins):
    """[S, ...] mixture NLL at every scale of CALIBRATION_SCALES: the reference for `best_scale`."""
    w, m = log_weights.double().exp(), margins.double()
    buf = torch.empty_like(m)
    return torch.stack([_nll_at(w, m, log_weights, s, buf) for s in CALIBRATION_SCALES.tolist()])


def plain_nll(log_weights, margins):
    return mixture_pair_nll(log_weights, margins).mean(-1)


def calibrated_nll(log_weights, margins):
    return grid_nll(log_weights, margins).min(0).values


def batch_loss(model, config, d, x, l2):
    """The training loss of a batch for any method, by autograd on heads/losses.py: the reference."""
    margins = d @ model.head_vectors().T
    if config.method in ("micro", "static"):
        log_w = model.log_weights(x if x is not None else margins)
        return mixture_nll(log_w, margins) + config.alpha * weight_regulariser(log_w, config.balance)
    return per_head_bt(margins) + 0.5 * l2 * model.heads.pow(2).sum()


def autograd_fit(train, config, steps):
    """`steps` steps of the fixed schedule by torch's AdamW on `batch_loss`, on the same batches as the fit."""
    config = config.resolved(train)
    data, model = DeviceSplit(train, config.router_input if config.method == "micro" else None), build_model(config, train.hidden_size, candidates(config, search=False)[0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    batches = data.batches(torch.arange(len(train)), config.batch_size, torch.Generator().manual_seed(config.seed))
    for step in range(steps):
        loss = batch_loss(model, config, *data.inputs(next(batches)), 0.0)
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(step, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """700 pairs, d = 64, 3 planted groups (cross-validated by default)."""
    path = tmp_path_factory.mktemp("stage1") / "small.h5"
    truth = simulate(path, pairs=700, seed=2)
    return path, truth, load_split(path, "train"), load_split(path, "test")


def _cand(seed: int, head_init: float = 1.0, alpha: float = 0.5) -> Candidate:
    return Candidate(alpha, head_init, seed)


@pytest.mark.parametrize("router, balance, alpha, masked", [("mlp", "batch", 0.5, False), ("mlp", "example", 0.5, False),
                                                            ("linear", "batch", 0.5, False), ("mlp", "batch", 0.0, False),
                                                            ("mlp", "batch", "mixed", True), ("linear", "example", "mixed", True)])
def test_hand_written_step_has_autograds_gradients(small, router, balance, alpha, masked):
    """Each stacked model's gradient is its own autograd gradient on the pairs its mask keeps, also when the
    models differ in the regulariser's weight (the candidates of `alpha_alternatives`)."""
    _, _, train, _ = small
    alphas = [0.5, 0.0] if alpha == "mixed" else [alpha, alpha]
    config = MixtureConfig(k=3, router=router, balance=balance, alpha=alphas[0], lr=1e-9)
    make = lambda: [build_model(config, train.hidden_size, _cand(s)) for s in (0, 1)]  # noqa: E731
    models, stack = make(), MicroStack(make(), config, torch.device("cpu"), alphas)
    d, x = train.diff[:32], train.context_inputs()[:32]
    mask = torch.ones(2, 32)
    if masked:
        mask[0, :10] = 0  # model 0 skips its fold's pairs
        mask[1, 20:] = 0
    loss = stack.step(d, x, lr=0.0, mask=mask if masked else None, want_loss=True)
    k, h = 3, (128 if router == "mlp" else 3)
    ref_losses = []
    for r, model in enumerate(models):
        keep = mask[r].bool()
        ref = batch_loss(model, replace(config, alpha=alphas[r]), d[keep], x[keep], 0.0)
        ref.backward()
        ref_losses.append(float(ref.detach()))
        lin = [m for m in model.router.net if isinstance(m, torch.nn.Linear)]
        expect = [model.heads.grad.T, lin[0].weight.grad.T, lin[0].bias.grad]
        got = [stack.grads[0][:, r * k : (r + 1) * k], stack.grads[1][:, r * h : (r + 1) * h], stack.grads[2][r * h : (r + 1) * h]]
        if router == "mlp":
            expect += [lin[1].weight.grad.T, lin[1].bias.grad]
            got += [stack.grads[3][r], stack.grads[4][r]]
        for e, g in zip(expect, got):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert loss == pytest.approx(np.mean(ref_losses), rel=1e-5)


@pytest.mark.parametrize("method, alpha, balance", [("single", 0.5, "batch"), ("ensemble", 0.5, "batch"), ("static", 0.5, "batch"),
                                                   ("static", 0.0, "example")])
def test_the_heads_trainer_has_autograds_gradients(small, method, alpha, balance):
    _, _, train, _ = small
    config = MixtureConfig(method=method, k=3, alpha=alpha, balance=balance)
    make = lambda: build_model(config, train.hidden_size, _cand(0), prior_unit=0.5)  # noqa: E731
    l2 = 0.1 if method == "ensemble" else 0.0  # the pull towards the prior is the ensemble's
    model, trainer = make(), HeadTrainer(make(), config, torch.device("cpu"), l2=l2)
    d = train.diff[:32]
    loss = trainer.step(d, None, lr=0.0, want_loss=True)
    ref = batch_loss(model, config, d, None, l2)
    ref.backward()
    torch.testing.assert_close(trainer.gw, model.heads.grad.T, rtol=1e-4, atol=1e-6)
    if method == "static":
        torch.testing.assert_close(trainer.gv, model.static_logits.grad, rtol=1e-4, atol=1e-6)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)


def test_flat_adamw_is_torchs_adamw():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=gen)
    ours, theirs = start.clone(), torch.nn.Parameter(start.clone())
    grad = torch.zeros(50)
    opt, ref = FlatAdamW(ours, grad), torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.0)
    for step in range(20):
        g = torch.randn(50, generator=gen)
        grad.copy_(g)
        theirs.grad = g.clone()
        opt.step(0.01 / (step + 1))
        ref.param_groups[0]["lr"] = 0.01 / (step + 1)
        ref.step()
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["micro", "single", "static"])
def test_fixed_epochs_match_the_autograd_fit(small, method):
    """Same init, same batches, same schedule: the hand-written fit and an autograd loop agree."""
    _, _, train, test = small
    config = MixtureConfig(method=method, k=3, epochs=3)
    fast, slow = fit_mixture(train, config), autograd_fit(train, config, 3 * -(-len(train) // 32))
    for (name, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    assert fast.fit_record.schedule == "fixed-epochs" and fast.train_steps == 3 * -(-len(train) // 32)
    router = "context" if method == "micro" else "prompt"
    assert evaluate(fast, test, router)["average"] == pytest.approx(evaluate(slow.eval(), test, router)["average"], abs=0.01)


def test_held_out_prompts_and_folds_never_split_a_prompt(small):
    _, _, train, _ = small
    fit, held = heldout_rows(train, HOLDOUT, HOLDOUT_MAX, seed=0)
    prompt = train.prompt_index.numpy()
    assert not set(prompt[fit.numpy()]) & set(prompt[held.numpy()])
    assert len(fit) + len(held) == len(train) and 0.05 < len(held) / len(train) < 0.2
    folds = prompt_folds(train, 5, seed=3)
    assert len(folds) == 5 and sorted(torch.cat(folds).tolist()) == list(range(len(train)))
    owners = [set(prompt[f.numpy()]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
    assert [f.tolist() for f in prompt_folds(train, 5, seed=3)] == [f.tolist() for f in folds]  # seeded
    assert [f.tolist() for f in prompt_folds(train, 5, seed=4)] != [f.tolist() for f in folds]


def test_calibrated_nll_ignores_the_margin_scale_and_pair_values_average_to_the_criteria():
    gen = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(2, 200, 4, generator=gen), -1)
    margins = torch.randn(2, 200, 4, generator=gen) * 3 + 2
    assert torch.allclose(calibrated_nll(log_w, margins), calibrated_nll(log_w, margins * 2 ** 0.25 * 8), atol=1e-5)
    values = pair_values(log_w, margins)
    torch.testing.assert_close(values.mean(-1), torch.stack([plain_nll(log_w, margins).double(), calibrated_nll(log_w, margins)]), rtol=1e-6, atol=1e-6)
    # where sigmoid underflows the grid falls back to log space
    huge = torch.full((1, 3, 2), -400.0)
    assert torch.isfinite(grid_nll(torch.log_softmax(torch.zeros(1, 3, 2), -1), huge)).all()
    assert len(CALIBRATION_SCALES) == 81
    # the coarse-to-fine search finds the full grid's best scale
    lw = torch.log_softmax(torch.randn(3, 300, 4, generator=gen), -1)
    for spread in (0.01, 1.0, 30.0):
        m = torch.randn(3, 300, 4, generator=gen) * spread + spread
        torch.testing.assert_close(best_scale(lw, m), CALIBRATION_SCALES[grid_nll(lw, m).argmin(0)])
    ours, theirs = torch.tensor([0.0, 0.1, 0.0, 0.1]), torch.tensor([1.0, 1.2, 0.9, 1.1])
    assert paired_z(ours, theirs) > 10 and paired_z(theirs, ours) < -10 and paired_z(ours, ours) == 0.0


def test_candidates_come_from_one_seeded_generator():
    cands = candidates(MixtureConfig(seed=3))
    assert len(cands) == 4 * 2 + 2 and cands[0] == Candidate(0.5, 1.0, cands[0].seed)
    assert len({c.seed for c in cands[:8]}) == 8 and all(c.seed not in (3, 3 + 7919) for c in cands)
    assert [c.seed for c in cands[8:]] == [cands[0].seed, cands[4].seed]  # an alternative alpha starts as alpha's first start
    assert [(c.alpha, c.head_init) for c in cands[8:]] == [(0.0, 1.0), (0.0, 0.01)]
    assert candidates(MixtureConfig(seed=3)) == cands and candidates(MixtureConfig(seed=4)) != cands
    assert candidates(MixtureConfig.paper(seed=3)) == cands[:4]
    assert candidates(MixtureConfig(seed=3), search=False) == cands[:1]


def test_one_rule_selects_a_non_default_candidate_only_past_the_bar():
    """The lowest held-out value wins among default candidates; another must lead the best default one by
    SELECT_Z standard errors of the per-pair difference."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(400, generator=gen) + 0.5
    home = [True, True, False]
    noise = torch.randn(400, generator=gen)
    slight = [base, base + 0.01, base - 0.0005 + 0.02 * (noise - noise.mean())]
    clear = [base, base + 0.01, base - 0.05 + 0.01 * torch.randn(400, generator=gen)]
    assert select(slight, home) == (0, None)
    assert select(clear, home)[0] == 2 and select(clear, home)[1] >= SELECT_Z
    assert select([base + 0.01, base], [True, True]) == (1, None)
    # the lowest of those past the bar wins, even when a lower one falls short of it
    other = torch.randn(400, generator=gen)
    sure, lower_but_noisy = base - 0.01 + 0.001 * (noise - noise.mean()), base - 0.02 + (other - other.mean())
    assert select([base, sure, lower_but_noisy], [True, False, False])[0] == 1
    # halving: the better half of each family (same alpha and head scale) before the last rung
    values = [base + v for v in (0.3, 0.2, 0.1, 0.0, 0.05)]
    family = ["a", "a", "a", "b", "b"]
    assert halve(values, family, [True, True, True, False, False], last=False)[0] == [1, 2, 3]
    # at the last rung the families' best compete by the rule: the leader and the best default train on
    assert halve(clear + [base + 0.2], ["a", "a", "b", "b"], home + [False], last=True)[0] == [0, 2]
    assert halve(slight, ["a", "a", "b"], home, last=True)[0] == [0]


def test_step_plan_and_batch_scale_with_the_cache():
    assert step_plan(480, 32).min_steps == 1000 and step_plan(480, 32).eval_every == 50
    big = step_plan(18_800, auto_batch_size(18_800))
    assert auto_batch_size(18_800) == 128 and big.min_steps == 250 and big.rungs == (32, 63, 125)
    assert auto_batch_size(500) == 32 and auto_batch_size(10 ** 6) == 512
    assert all(r <= step_plan(480, 32).min_steps for r in step_plan(480, 32).rungs)


@pytest.mark.slow
def test_default_fit_records_its_search_selection_refit_and_cost(tmp_path):
    """6K pairs, d = 64: one held-out slice; the halving rungs shrink the stack to the selected candidate,
    the refit trains that candidate from its initialisation, and the cost figures are in the record."""
    path = tmp_path / "six.h5"
    truth = simulate(path, pairs=6000, seed=11)
    train = load_split(path, "train")
    model = fit_mixture(train, MixtureConfig())
    rec = model.fit_record
    assert min(match_heads(truth, model.head_vectors())["cosine"]) >= 0.9
    assert rec.folds == 0 and len(rec.candidates) == 10 and [len(r["kept"]) for r in rec.rungs][:2] == [6, 4]
    assert rec.stop_reason == "patience" and rec.best_step <= rec.steps and rec.kept_criterion in ("nll", "calibrated-nll")
    assert rec.refit_steps >= round(rec.best_step * len(train) / (len(train) - rec.heldout_pairs)) - 1
    assert rec.candidate_steps == model.train_steps and 1 < rec.steps_vs_one_start < 3
    assert rec.matmul_seconds > 0 and rec.time_vs_matmul > 0 and rec.seconds > 0
    assert rec.curve[0]["starts"] == list(range(10)) and rec.curve[-1]["starts"][0] in rec.rungs[-1]["kept"]


@pytest.mark.slow
def test_cross_validation_recovers_planted_heads_that_one_slice_misses(tmp_path):
    """600-pair planted cache: the ~48-pair slice of one held-out slice chose a usual start (head cos ~0.55);
    the folds, pooled, select a better candidate, much nearer the planted directions."""
    path = tmp_path / "p600.h5"
    truth = simulate(path, regime="prompt", pairs=600, dim=64, seed=0)
    train = load_split(path, "train")
    model = fit_mixture(train, MixtureConfig(seed=0))
    rec = model.fit_record
    assert rec.folds == FOLDS and rec.heldout_pairs == len(train) and rec.chosen != 0
    assert float(np.mean(match_heads(truth, model.head_vectors())["cosine"])) > 0.75  # one slice: ~0.55


@pytest.mark.slow
def test_threads_change_neither_the_selection_nor_the_accuracy(small):
    _, _, train, test = small
    one, two = (fit_mixture(train, MixtureConfig(k=3, threads=t)) for t in (1, 2))
    assert one.fit_record.chosen == two.fit_record.chosen and one.fit_record.rungs == two.fit_record.rungs
    acc = [evaluate(m, test, "context")["average"]["best_accuracy"] for m in (one, two)]
    assert abs(acc[0] - acc[1]) <= 0.002, acc


def test_removed_options_get_one_line_naming_what_replaced_them(small, tmp_path):
    path = small[0]
    flag = CliRunner().invoke(app, ["fit-mixture", str(path), "--out", str(tmp_path / "a"), "--stop-on", "nll"])
    assert flag.exit_code == 2 and "stop_on was removed" in flag.output and "later best" in flag.output
    cfg = tmp_path / "old.json"
    cfg.write_text(json.dumps({"k": 3, "refit_length": 3.0}))
    file = CliRunner().invoke(app, ["fit-mixture", str(path), "--out", str(tmp_path / "b"), "--config", str(cfg)])
    assert file.exit_code == 2 and "refit_length was removed" in file.output and len(file.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="head_init"):
        MixtureConfig(head_init=(1.0, 0.0))
    with pytest.raises(ValueError, match="alpha_alternatives"):
        MixtureConfig(alpha_alternatives=(-1.0,))


def test_run_records_the_fit_and_plots_the_curve(small, tmp_path):
    path = small[0]
    result = CliRunner().invoke(app, ["fit-mixture", str(path), "--out", str(tmp_path / "run"), "--k", "3", "--restarts", "1"])
    assert result.exit_code == 0, result.output
    assert "held-out NLL" in result.stderr and f"{FOLDS}-fold cross-validation over prompts" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fit = metrics["fit"]
    assert fit["folds"] == FOLDS and {"candidates", "chosen", "rungs", "curve", "candidate_steps", "time_vs_matmul"} <= set(fit)
    assert metrics["train_steps"] == fit["candidate_steps"] and (tmp_path / "run" / "heldout_curve.png").stat().st_size > 0
    quiet = CliRunner().invoke(app, ["fit-mixture", str(path), "--out", str(tmp_path / "q"), "--k", "3", "--restarts", "1", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.parametrize("router", ["mlp", "linear"])
def test_dropping_models_from_the_stack_keeps_the_others_and_their_optimiser_state(small, router):
    """After `keep`, the remaining models have the same weights and train on exactly as a stack that never
    held the dropped ones."""
    _, _, train, _ = small
    config = MixtureConfig(router=router, k=3)
    make = lambda seeds, alphas: MicroStack([build_model(config, train.hidden_size, _cand(s)) for s in seeds], config, torch.device("cpu"), alphas)  # noqa: E731
    d, x = train.diff[:32], train.context_inputs()[:32]
    big, small_stack = make([0, 1, 2, 3], [0.5, 0.5, 0.0, 0.5]), make([3, 1], [0.5, 0.5])
    for stack in (big, small_stack):
        for _ in range(3):
            stack.step(d, x, 1e-2)
    before = [big.snapshot(r) for r in range(4)]
    big.keep([3, 1])
    assert big.alphas == [0.5, 0.5] and all(torch.equal(a, b) for a, b in zip(big.snapshot(0), before[3]))
    for _ in range(3):
        big.step(d, x, 1e-2)
    for _ in range(3):
        small_stack.step(d, x, 1e-2)
    for r in range(2):
        for a, b in zip(big.snapshot(r), small_stack.snapshot(r)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
