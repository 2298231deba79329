"""Stage-2 building blocks: eq. 6 soft labels, the stacked router, HyRe weights, the MAP solver, the scoring API."""

import math

import pytest
import torch

from micro.heads.model import MixtureRewardModel, Router
from micro.router import (
    EmbeddingRewardModel,
    StackedRouter,
    adapt_routers,
    fit_map_heads,
    hyre_weights,
    load_adapted,
    save_router,
    soft_labels,
)


def test_soft_labels_equal_eq6_computed_directly():
    gen = torch.Generator().manual_seed(0)
    prior = torch.softmax(torch.randn(20, 5, generator=gen, dtype=torch.float64), -1)
    losses = torch.rand(20, 5, generator=gen, dtype=torch.float64) * 3
    for tau in (0.1, 1.0, 5.0):
        naive = prior * torch.exp(-losses / tau)
        naive = naive / naive.sum(-1, keepdim=True)
        got = soft_labels(prior.log().float(), losses.float(), tau).exp().double()
        assert torch.allclose(got, naive, atol=1e-6)


def test_tau_to_zero_puts_all_weight_on_best_head_and_tau_to_inf_keeps_the_prior():
    prior = torch.tensor([[0.7, 0.2, 0.1]]).log()
    losses = torch.tensor([[0.9, 0.3, 0.5]])
    for tau in (1e-6, 0.0):
        assert torch.allclose(soft_labels(prior, losses, tau).exp(), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6)
    for tau in (1e8, float("inf")):
        assert torch.allclose(soft_labels(prior, losses, tau).exp(), prior.exp(), atol=1e-6)


def test_soft_labels_stay_finite_at_tau_1e4_with_huge_losses():
    prior = torch.log_softmax(torch.randn(64, 10), -1)
    losses = torch.rand(64, 10) * 500 + 200  # L / tau ~ 1e6 would overflow exp() directly
    out = soft_labels(prior, losses, 1e-4)
    assert torch.isfinite(out.exp()).all() and not torch.isnan(out).any()
    assert torch.allclose(out.exp().sum(-1), torch.ones(64))
    assert torch.equal(out.argmax(-1), losses.argmin(-1))


def test_context_log_weights_are_hedge_after_b_rounds():
    """Hedge over a context's B pairs: weights prop. to exp(-eta sum_i L_ik), eta = rate sqrt(8 ln K / B);
    masked heads (infinite losses) get none and K counts the others; rate 0 leaves the router alone."""
    from micro.router.hedge import context_log_weights

    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(2, 3, 7, 4, generator=gen, dtype=torch.float64) * 2  # [S, A, B, K]
    for rate in (0.5, 1.0):
        eta = rate * math.sqrt(8 * math.log(4) / 7)
        naive = torch.exp(-eta * losses.sum(-2))
        got = torch.softmax(context_log_weights(losses, rate), -1)
        assert torch.allclose(got, naive / naive.sum(-1, keepdim=True), atol=1e-12)
    assert torch.equal(context_log_weights(losses, 0.0), torch.zeros(2, 3, 4, dtype=torch.float64))
    masked = losses.clone()
    masked[..., 1] = float("inf")
    out = context_log_weights(masked, 1.0)
    assert torch.isinf(out[..., 1]).all() and torch.isfinite(out[..., [0, 2, 3]]).all()
    eta3 = math.sqrt(8 * math.log(3) / 7)
    keep = losses[..., [0, 2, 3]].sum(-2)
    assert torch.allclose(torch.softmax(out, -1)[..., [0, 2, 3]], torch.softmax(-eta3 * keep, -1), atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_stacked_router_is_its_copies(kind):
    torch.manual_seed(0)
    router = Router(8, 4, kind, 16)
    stack = StackedRouter(router, 3)
    x = torch.randn(3, 5, 8)
    assert torch.allclose(stack(x), router(x), atol=1e-6)
    assert torch.allclose(stack.unstack(2)(x[2]), router(x[2]), atol=1e-6)


def test_stacked_training_equals_training_each_router_alone():
    torch.manual_seed(0)
    router = Router(6, 3, "mlp", 8)
    x, losses = torch.randn(2, 40, 6), torch.rand(2, 40, 3)
    both = adapt_routers(router, x, losses, [0, 1], tau=0.5, epochs=3, batch_size=16, lr=1e-2)
    alone = adapt_routers(router, x[1:], losses[1:], [1], tau=0.5, epochs=3, batch_size=16, lr=1e-2)[0]
    probe = torch.randn(7, 6)
    assert torch.allclose(both[1](probe), alone(probe), atol=1e-5)


def test_hyre_posterior_is_bayes_over_heads():
    margins = torch.tensor([[2.0, -1.0], [1.0, 0.5], [-0.5, 1.0]])
    loglik = torch.nn.functional.logsigmoid(margins).sum(0)
    assert torch.allclose(hyre_weights(margins), torch.softmax(loglik, 0), atol=1e-6)


def test_map_head_without_prior_is_regularised_logistic_regression():
    """fit_map_heads (span/eigen Newton) equals a direct primal solve at the chosen precision."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(1, 30, 12, generator=gen, dtype=torch.float64)
    d = d * torch.sign(d[..., :1] + 0.3 * torch.randn(1, 30, 1, generator=gen, dtype=torch.float64))
    sol = fit_map_heads(d, (1.0,))
    lam = float(sol.precision[0]) * float(d[0].pow(2).sum(1).mean())
    w = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(d[0] @ w)).sum() + 0.5 * lam * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.allclose(sol.delta[0].double(), w.detach(), atol=1e-4)


def test_oracle_head_minimises_its_regularised_bt_loss():
    """fit_oracle_head (L-BFGS on a hand-written gradient) returns a point where autograd's gradient of the
    objective at the chosen precision vanishes."""
    from micro.router.baselines import fit_oracle_head

    gen = torch.Generator().manual_seed(0)
    d = torch.randn(400, 8, generator=gen)
    d = d * torch.sign(d[:, :1] + 0.5 * torch.randn(400, 1, generator=gen))
    head, c = fit_oracle_head(d, (1e-3, 1e-2, 1e-1, 1.0))
    w = head.double().clone().requires_grad_()
    lam = c * float(d.double().pow(2).sum(1).mean())
    ((torch.nn.functional.softplus(-(d.double() @ w)).sum() + 0.5 * lam * w.pow(2).sum()) / len(d)).backward()
    assert float(w.grad.abs().max()) < 1e-4, w.grad
    assert float(head.norm()) > 0.1  # a real head, not the start


def test_api_scores_margins_and_rewards_consistently(tmp_path):
    from micro.heads.model import save_model

    torch.manual_seed(0)
    model = MixtureRewardModel(8, 3, weights="router", router_hidden=16)
    save_model(model, tmp_path / "run", {"config": {"method": "micro", "k": 3}})
    router = Router(8, 3, "mlp", 16)
    heads = torch.randn(2, 8)
    save_router(tmp_path / "routers" / "b5_s0", router, {"budget": 5}, refine={"head": heads, "attributes": ["a", "b"]})
    prm = load_adapted(tmp_path / "run", tmp_path / "routers" / "b5_s0.safetensors")
    chosen, rejected, ctx = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    margins = prm.score(chosen, rejected, ctx)
    expect = (torch.softmax(router(ctx), -1) * model.head_margins(chosen - rejected)).sum(-1)
    assert torch.allclose(margins, expect.detach(), atol=1e-5)
    assert torch.allclose(prm.rewards(chosen, ctx) - prm.rewards(rejected, ctx), margins, atol=1e-5)
    refined = load_adapted(tmp_path / "run", tmp_path / "routers" / "b5_s0.json", attribute="b")
    assert torch.allclose(refined.score(chosen, rejected, ctx), (chosen - rejected) @ heads[1], atol=1e-5)
    assert torch.allclose(refined.rewards(chosen, ctx) - refined.rewards(rejected, ctx), (chosen - rejected) @ heads[1], atol=1e-5)
    with pytest.raises(ValueError, match="no micro-refine head for attribute 'c'"):
        load_adapted(tmp_path / "run", tmp_path / "routers" / "b5_s0.json", attribute="c")
    assert isinstance(prm, EmbeddingRewardModel) and math.isfinite(float(margins.sum()))
