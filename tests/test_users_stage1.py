"""Stage 1 with user ids (the cache's attribute) when the data have no contexts: each user's own logits over the
heads (f = softmax(router(x) + u_user)), its hand-written gradient against autograd, when router_input 'auto'
switches it on, what a run stores, and the known answer: on a planted cache whose groups label the same
prompts, without contexts, the per-user routing recovers the groups that the prompt router cannot tell apart
(docs/users.md)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from micro.embedcache import load_split
from micro.embedcache.rows import DeviceSplit, split_users, user_rows
from micro.heads import MixtureConfig, evaluate, fit_mixture, load_run, run_fit_mixture, simulate
from micro.heads import stack as stack_module
from micro.heads.config import SimulateConfig, routes_by_user
from micro.heads.losses import mixture_nll, weight_regulariser
from micro.heads.model import RunConfigError
from micro.heads.search import Candidate
from micro.heads.stack import MicroStack
from micro.heads.train import build_model


def without_contexts(split):
    """The split as a cache without contexts reads (no (context + prompt) inputs, context -1)."""
    return replace(split, context_index=torch.full_like(split.context_index, -1), context_embedding=None,
                   context_id=torch.full_like(split.context_id, -1))


def shared_cache(path, **fields):
    """A planted 'shared' cache (every group labels the same triples) without contexts: SimulateConfig's
    `contexts=False` where it exists; else the splits are stripped of their contexts in memory."""
    native = "contexts" in {f for f in SimulateConfig.__dataclass_fields__}
    truth = simulate(path, regime="shared", **fields, **({"contexts": False} if native else {}))
    train, test = (load_split(path, s) for s in ("train", "test"))
    return truth, without_contexts(train), without_contexts(test)


def truth_per_group(truth, split):
    """Each group's realised accuracy of its own planted BT rule on its pairs of `split`."""
    rows, groups = split.pair_rows, split.attribute.numpy()
    return np.array([float((truth.pair_scores[rows[groups == g], g] > 0).mean()) for g in range(truth.groups)])


def best_per_group(model, split):
    return np.array([v["best_accuracy"] for v in evaluate(model, split, "prompt")["per_attribute"].values()])


def user_routed_per_group(model, split):
    users = user_rows(split, model.user_names)
    with torch.no_grad():
        margin = model.routed_margin(split.diff, split.prompt_inputs(), users)
    return np.array([float((margin[split.attribute == g] > 0).float().mean()) for g in range(len(split.attributes))])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """900 pairs (300 triples x 3 groups), d = 16, no contexts."""
    return shared_cache(tmp_path_factory.mktemp("users") / "small.h5", groups=3, pairs=900, dim=16, seed=1)


def _reference_loss(model, config, d, x, users):
    log_w = model.log_weights(x, users)
    return mixture_nll(log_w, d @ model.head_vectors().T) + config.alpha * weight_regulariser(log_w, config.balance)


@pytest.mark.parametrize("router, reads_prompt, balance", [("mlp", False, "batch"), ("linear", False, "example"),
                                                           ("mlp", True, "batch"), ("linear", True, "batch")])
def test_stacked_step_with_users_has_autograds_gradients(small, monkeypatch, router, reads_prompt, balance):
    """Every model's gradient, user logits included, is autograd's on softmax(router(x) + u_user), for pairs
    with and without a user (-1: the router alone), with a fold mask; without reading the prompt the router's
    logits are its last bias (its last weights stay 0)."""
    monkeypatch.setattr(stack_module, "USERS_READ_PROMPT", reads_prompt)
    _, train, _ = small
    config = MixtureConfig(k=3, router=router, balance=balance).resolved(train)
    names = split_users(train)
    models = [build_model(config, train.hidden_size, Candidate(0.5, 1.0, s), users=names) for s in (0, 1)]
    for r, model in enumerate(models):  # random user logits, so that they count in the forward pass too
        with torch.no_grad():
            model.user_logits.copy_(torch.randn(model.user_logits.shape, generator=torch.Generator().manual_seed(r)))
    stack = MicroStack(models, config, torch.device("cpu"), [0.5, 0.5])  # copies the weights
    data = DeviceSplit(train, "prompt", users=names)
    rows = torch.arange(40)
    (d, x), users = data.inputs(rows), data.users(rows).clone()
    users[::7] = -1  # pairs without a user id
    mask = torch.ones(2, 40)
    mask[0, :10] = 0
    loss = stack.step(d, x, lr=0.0, mask=mask, want_loss=True, users=users)
    k = 3
    refs = []
    for r, model in enumerate(models):
        keep = mask[r].bool()
        ref = _reference_loss(model, config, d[keep], x[keep], users[keep])
        ref.backward()
        refs.append(float(ref.detach()))
        last = model.router.net[-1]
        torch.testing.assert_close(stack.grads[0][:, r * k:(r + 1) * k], model.heads.grad.T, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stack.grads[stack.user_slot][r], model.user_logits.grad * stack.user_scale, rtol=1e-4, atol=1e-6)
        bias = stack.grads[4][r] if router == "mlp" else stack.grads[2][r * k:(r + 1) * k]
        torch.testing.assert_close(bias, last.bias.grad, rtol=1e-4, atol=1e-6)
        if not reads_prompt:
            assert float(last.weight.detach().abs().max()) == 0.0 and float(stack.grads[1].abs().max()) == 0.0
    assert loss == pytest.approx(np.mean(refs), rel=1e-5)


def test_users_switch_on_only_without_contexts_and_with_several_users(small, tmp_path):
    """router_input 'auto' routes by user for micro on a cache without contexts and with more than one attribute;
    not with contexts (the default stays), with one attribute, for the baselines, with an explicit 'prompt',
    nor in the paper's configuration. The resolved config reads 'prompt'."""
    _, train, _ = small
    assert routes_by_user(MixtureConfig(), train) and MixtureConfig().resolved(train).router_input == "prompt"
    assert not any(routes_by_user(MixtureConfig(method=m), train) for m in ("single", "static", "ensemble"))
    assert not routes_by_user(MixtureConfig.paper(), train) and not routes_by_user(MixtureConfig(router_input="prompt"), train)
    assert not routes_by_user(MixtureConfig(), train.subset(torch.nonzero(train.attribute == 1).flatten()))
    path = tmp_path / "ctx.h5"
    simulate(path, regime="shared", groups=3, pairs=300, dim=8, seed=0)  # with contexts
    with_context = load_split(path, "train")
    assert not routes_by_user(MixtureConfig(), with_context) and not routes_by_user(MixtureConfig(router_input="prompt"), with_context)
    part = replace(with_context, context_index=torch.where(torch.arange(len(with_context)) % 2 == 0, with_context.context_index, -1))
    assert not routes_by_user(MixtureConfig(), part)  # some contexts: the prompt router, as before
    model = fit_mixture(train, MixtureConfig(k=2, epochs=1, threads=1))
    assert model.user_names == ["group0", "group1", "group2"] and model.architecture()["users"] == model.user_names
    assert fit_mixture(train, MixtureConfig(k=2, epochs=1, threads=1, router_input="prompt")).user_names == []


def _run(tmp_path, name="run", **fields):
    path = tmp_path / "cache.h5"
    if not path.exists():
        native = "contexts" in SimulateConfig.__dataclass_fields__
        if not native:
            pytest.skip("writing a cache without contexts needs SimulateConfig.contexts")
        simulate(path, regime="shared", groups=3, pairs=600, dim=8, seed=2, contexts=False)
    return path, run_fit_mixture(path, tmp_path / name, MixtureConfig(k=3, epochs=2, threads=1, **fields))


def test_a_run_stores_its_users_and_reloads_them(tmp_path):
    """model.safetensors holds user_logits [G, K], config.json the user names; the reloaded model gives a seen
    user's [K] offset and None for an unknown one; metrics.json has each user's routed accuracy."""
    _, metrics = _run(tmp_path)
    run = tmp_path / "run"
    model, config = load_run(run)
    assert model.user_names == ["group0", "group1", "group2"] == config["architecture"]["users"]
    assert config["config"]["router_input"] == "prompt"  # what the router reads; the users are the model's
    stored = load_file(str(run / "model.safetensors"))["user_logits"]
    assert stored.shape == (3, 3) and float(stored.abs().max()) > 0
    offset = model.user_log_weights("group1")
    assert offset.shape == (3,) and torch.equal(offset, stored[1]) and model.user_log_weights("nobody") is None
    x = torch.randn(2, 8)
    torch.testing.assert_close(model.log_weights(x, model.user_index(["group1", "nobody"])),
                               torch.log_softmax(model.router_logits(x) + torch.stack([offset, torch.zeros(3)]), -1))
    assert set(metrics["users"]["per_attribute"]) == {"group0", "group1", "group2"} and metrics["users"]["unseen"] == []
    assert json.loads((run / "metrics.json").read_text())["users"] == metrics["users"]

    # a damaged run is refused in one line naming the file
    weights = load_file(str(run / "model.safetensors"))
    save_file({**weights, "user_logits": weights["user_logits"][:2].contiguous()}, str(run / "model.safetensors"))
    with pytest.raises(RunConfigError, match="user logits of shape"):
        load_run(run)


def test_a_run_without_users_stores_none(tmp_path):
    _, metrics = _run(tmp_path, router_input="prompt")
    model, config = load_run(tmp_path / "run")
    assert model.user_names == [] and model.user_log_weights("group0") is None and "users" not in config["architecture"]
    assert "user_logits" not in load_file(str(tmp_path / "run" / "model.safetensors")) and "users" not in metrics


@pytest.fixture(scope="module")
def four_groups(tmp_path_factory):
    """2000 pairs (500 triples x 4 groups), d = 32, no contexts: the groups share every prompt."""
    return shared_cache(tmp_path_factory.mktemp("users") / "four.h5", groups=4, pairs=2000, dim=32, seed=0)


def test_per_user_routing_recovers_planted_groups_that_share_their_prompts(four_groups):
    """Without contexts the prompt router cannot tell the groups apart: every group's best head sits near
    chance (~0.6 against a truth of ~0.89). Each user's own logits route its pairs to its own head: every
    group's best head, and its own routing, within a few points of the group's planted rule."""
    truth, train, test = four_groups
    target = truth_per_group(truth, test)
    off = fit_mixture(train, MixtureConfig(epochs=30, router_input="prompt", threads=1))
    assert off.user_names == [] and np.all(best_per_group(off, test) < target - 0.15) and best_per_group(off, test).mean() < 0.7
    model = fit_mixture(train, MixtureConfig(epochs=30, threads=1))  # router_input 'auto': by user
    assert model.user_names == ["group0", "group1", "group2", "group3"]
    best, own = best_per_group(model, test), user_routed_per_group(model, test)
    assert np.all(best >= target - 0.05), (best, target)
    assert np.all(own >= target - 0.05), (own, target)
    # each user routes most of its weight to one head, a different one for each group
    heads = model.user_logits.detach().softmax(-1).argmax(-1)
    assert len(set(heads.tolist())) == 4
