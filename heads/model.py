"""The reward model that trains on cached embeddings: K linear BT heads and a router.

Heads have no bias, so r_k(x, a_w) - r_k(x, a_l) = w_k . (e_w - e_l): every method trains on the
difference vectors of the cache. The router maps a prompt (or context + prompt) embedding to mixture
weights on the simplex. A model fitted with users (the cache's attribute ids, MixtureConfig.users) also
holds one learned logit vector u_g [K] per user seen in training, added to the router's logits:
f(x, g) = softmax(router(x) + u_g); a pair without a known user is routed by router(x) alone. Weights are
saved as safetensors beside a JSON config (the user names under "architecture"); nothing is pickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class Router(nn.Module):
    """Prompt embedding -> K mixture logits. `mlp`: one hidden layer + ReLU (the paper); `linear`: as the
    authors' released code."""

    def __init__(self, hidden_size: int, k: int, kind: str = "mlp", width: int = 128):
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(), nn.Linear(width, k))
        elif kind == "linear":
            self.net = nn.Sequential(nn.Linear(hidden_size, k))
        else:
            raise ValueError(f"router must be 'mlp' or 'linear', not {kind!r}")
        self.kind = kind
        # masked heads (`mask_heads`): not saved with the weights; whoever loads a router re-applies its mask
        self.register_buffer("head_mask", torch.zeros(k, dtype=torch.bool), persistent=False)

    def mask_heads(self, heads) -> "Router":
        """Route no weight to `heads` (indices); [] unmasks."""
        self.head_mask = build_mask(self.net[-1].out_features, heads).to(self.head_mask.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_logits(self.net(x), self.head_mask)


def build_mask(k: int, heads) -> torch.Tensor:
    """[K] bool, True for each head in `heads`; refuses unknown heads and masking all of them."""
    heads = sorted({int(h) for h in heads or ()})
    bad = [h for h in heads if not 0 <= h < k]
    if bad:
        raise ValueError(f"cannot mask head(s) {bad}: the model has heads 0..{k - 1}")
    if len(heads) >= k:
        raise ValueError(f"cannot mask all {k} heads: at least one must keep its weight")
    mask = torch.zeros(k, dtype=torch.bool)
    mask[heads] = True
    return mask


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked heads' logits -> -inf, so the softmax gives them weight 0 and renormalises over the rest."""
    return logits.masked_fill(mask.to(logits.device), float("-inf"))


class MixtureRewardModel(nn.Module):
    """K linear heads (+ an optional frozen random prior per head) and a mixture-weight model.

    weights: `router` (prompt-conditioned, MiCRo), `static` (one learned logit vector, MaxMin-style),
    or `uniform` (fixed 1/K: single head and the shared-base ensemble).
    `seed` alone sets every initial weight (heads, prior, router); the global RNG is left as it was.
    Heads start uniform in +-head_init / sqrt(hidden_size).
    """

    def __init__(
        self,
        hidden_size: int,
        k: int,
        *,
        weights: str = "router",
        router: str = "mlp",
        router_hidden: int = 128,
        prior_scale: float = 0.0,
        seed: int = 0,
        head_init: float = 1.0,
        users: list[str] | tuple[str, ...] = (),
    ):
        super().__init__()
        if weights not in ("router", "static", "uniform"):
            raise ValueError(f"weights must be router|static|uniform, not {weights!r}")
        gen = torch.Generator().manual_seed(seed)
        self.hidden_size, self.k, self.weights_kind = hidden_size, k, weights
        self.router_kind, self.router_hidden, self.prior_scale = router, router_hidden, prior_scale
        bound = 1.0 / math.sqrt(hidden_size)
        self.heads = nn.Parameter((torch.rand(k, hidden_size, generator=gen) * 2 - 1) * (bound * head_init))
        prior = torch.randn(k, hidden_size, generator=gen) * (prior_scale / math.sqrt(hidden_size))
        self.register_buffer("prior", prior)
        self.router = None
        if weights == "router":
            with torch.random.fork_rng(devices=[]):  # the router's layers draw from the global RNG: seed it, then restore
                torch.manual_seed(seed)
                self.router = Router(hidden_size, k, router, router_hidden)
        self.static_logits = nn.Parameter(torch.zeros(k)) if weights == "static" else None
        self.user_names: list[str] = check_users(users, "users")
        if self.user_names and weights != "router":
            raise ValueError(f"per-user routing needs a router; weights {weights!r} has none")
        # zeros: every user starts routed as the prompt router routes; training moves each user's own logits
        self.user_logits = nn.Parameter(torch.zeros(len(self.user_names), k)) if self.user_names else None
        self.register_buffer("head_mask", torch.zeros(k, dtype=torch.bool), persistent=False)

    def mask_heads(self, heads) -> "MixtureRewardModel":
        """Give `heads` (indices) zero mixture weight everywhere the weights are used (routed margins,
        likelihood, stage 2, scoring); the other heads' weights renormalise. Empty: unmask all."""
        self.head_mask = build_mask(self.k, heads).to(self.head_mask.device)
        if self.router is not None:
            self.router.mask_heads(heads)
        return self

    @property
    def masked_heads(self) -> list[int]:
        return [int(h) for h in torch.nonzero(self.head_mask).flatten()]

    # -- scores -----------------------------------------------------------------------------------
    def head_vectors(self) -> torch.Tensor:
        """[K, d] effective reward directions (trainable head + frozen prior)."""
        return self.heads + self.prior

    def head_margins(self, diff: torch.Tensor) -> torch.Tensor:
        """[n, K] reward margins r_k(chosen) - r_k(rejected) from difference vectors [n, d]."""
        return diff @ self.head_vectors().T

    def rewards(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[n, K] per-head rewards of response embeddings."""
        return embeddings @ self.head_vectors().T

    # -- users ----------------------------------------------------------------------------------------
    def user_index(self, names) -> torch.Tensor:
        """[n] long: each name's row in `user_names`, -1 for a user the model has not seen."""
        rows = {name: i for i, name in enumerate(self.user_names)}
        return torch.tensor([rows.get(name, -1) for name in names], dtype=torch.long)

    def user_log_weights(self, name: str) -> torch.Tensor | None:
        """[K] the seen user's logit offset u_g (added to the router's logits: f = softmax(router(x) + u_g));
        None for a user the model has not seen (route by the router alone)."""
        if name not in self.user_names:
            return None
        return self.user_logits[self.user_names.index(name)].detach().clone()

    def user_offsets(self, users: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """[n, K] each pair's user logits (0 where users[i] < 0); None without users."""
        if users is None or self.user_logits is None:
            return None
        users = users.to(like.device)
        known = users >= 0
        return self.user_logits.to(like.dtype)[users.clamp_min(0)] * known.unsqueeze(-1).to(like.dtype)

    # -- mixture weights --------------------------------------------------------------------------
    def router_logits(self, router_input: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """[n, K] mixture logits; `users` ([n] rows of `user_names`, -1: unknown) adds each pair's user logits."""
        n = router_input.shape[0]
        if self.router is not None:
            logits = self.router(router_input)  # the router applies the mask
            offsets = self.user_offsets(users, logits)
            return logits if offsets is None else logits + offsets
        if self.static_logits is not None:
            return mask_logits(self.static_logits.expand(n, -1), self.head_mask)
        return mask_logits(torch.zeros(n, self.k, device=router_input.device, dtype=router_input.dtype), self.head_mask)

    def log_weights(self, router_input: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """[n, K] log mixture weights (with each pair's user logits where `users` gives one)."""
        return torch.log_softmax(self.router_logits(router_input, users), dim=-1)

    def mixture_log_prob(self, diff: torch.Tensor, router_input: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """[n] log P(chosen > rejected) = logsumexp_k (log f_k + log sigmoid(margin_k)); never underflows."""
        return torch.logsumexp(self.log_weights(router_input, users) + nn.functional.logsigmoid(self.head_margins(diff)), dim=-1)

    def routed_margin(self, diff: torch.Tensor, router_input: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """[n] the routed reward margin sum_k f_k(x) (r_k(w) - r_k(l)); its sign is the routed choice."""
        return (self.log_weights(router_input, users).exp() * self.head_margins(diff)).sum(-1)

    # -- persistence ------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        arch = {
            "hidden_size": self.hidden_size,
            "k": self.k,
            "weights": self.weights_kind,
            "router": self.router_kind,
            "router_hidden": self.router_hidden,
            "prior_scale": self.prior_scale,
        }
        if self.user_names:  # the rows of user_logits, in order
            arch["users"] = list(self.user_names)
        return arch

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "MixtureRewardModel":
        return cls(
            arch["hidden_size"],
            arch["k"],
            weights=arch["weights"],
            router=arch["router"],
            router_hidden=arch["router_hidden"],
            prior_scale=arch.get("prior_scale", 0.0),
            users=arch.get("users", ()),
        )


def check_users(users: Any, source: Any) -> list[str]:
    """`users` as a list of distinct strings (the user names of a model), or ValueError naming `source`."""
    if isinstance(users, str) or not isinstance(users, (list, tuple)) or not all(isinstance(u, str) for u in users):
        raise ValueError(f"{source}: users must be a list of strings, not {users!r}")
    if len(set(users)) != len(users):
        raise ValueError(f"{source}: users must be distinct; {sorted({u for u in users if users.count(u) > 1})} repeat")
    return list(users)


def save_model(model: MixtureRewardModel, run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write model.safetensors and config.json (config must hold what rebuilds the model and what it was
    trained on; the architecture is added under "architecture")."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / "model.safetensors"))
    (run_dir / "config.json").write_text(json.dumps({**config, "architecture": model.architecture()}, indent=2) + "\n")


class RunConfigError(ValueError):
    """A run directory whose config.json or weights cannot be used; the message names the file and the fix."""


_ARCH_INTS = ("hidden_size", "k", "router_hidden")


def check_architecture(arch: Any, source: Any) -> dict[str, Any]:
    """Validate an "architecture" entry (types and ranges) before anything is allocated from it."""
    if not isinstance(arch, dict):
        raise RunConfigError(f"{source}: 'architecture' must be an object, not {type(arch).__name__}")
    for name in _ARCH_INTS:
        value = arch.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunConfigError(f"{source}: architecture.{name} must be a positive integer, not {value!r}")
    if arch.get("weights") not in ("router", "static", "uniform"):
        raise RunConfigError(f"{source}: architecture.weights must be router, static or uniform, not {arch.get('weights')!r}")
    if arch.get("router") not in ("mlp", "linear"):
        raise RunConfigError(f"{source}: architecture.router must be mlp or linear, not {arch.get('router')!r}")
    scale = arch.get("prior_scale", 0.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise RunConfigError(f"{source}: architecture.prior_scale must be a finite number, not {scale!r}")
    try:
        users = check_users(arch.get("users", []), f"{source}: architecture")
    except ValueError as exc:
        raise RunConfigError(str(exc)) from None
    if users and arch["weights"] != "router":
        raise RunConfigError(f"{source}: architecture.users needs weights 'router', not {arch['weights']!r}")
    return arch


def _stored_shapes(weights_path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunConfigError(f"{weights_path} is not a readable safetensors file ({exc})") from None


def load_model(run_dir: str | Path) -> tuple[MixtureRewardModel, dict[str, Any]]:
    """Rebuild a model from a run directory (safetensors + JSON, no pickle).

    config.json is validated (types, ranges, agreement with the stored tensor shapes) before any tensor is
    allocated, and the weights must be finite; a damaged file raises RunConfigError naming it."""
    run_dir = Path(run_dir)
    cfg_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: {run_dir} is not a finished `micro fit-mixture` run directory.")
    fix = "refit the run with `micro fit-mixture ... --overwrite`"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunConfigError(f"{cfg_path} is not readable JSON ({exc}); {fix}.") from None
    if not isinstance(config, dict):
        raise RunConfigError(f"{cfg_path} must hold a JSON object; {fix}.")
    try:
        arch = check_architecture(config.get("architecture"), cfg_path)
        if "config" in config:
            from .config import MixtureConfig

            if not isinstance(config["config"], dict):
                raise RunConfigError(f"{cfg_path}: 'config' must be an object")
            try:
                MixtureConfig.from_dict(config["config"])
            except (TypeError, ValueError) as exc:
                raise RunConfigError(f"{cfg_path}: config: {exc}") from None
        if not isinstance(config.get("cache", {}), dict):
            raise RunConfigError(f"{cfg_path}: 'cache' must be an object")
        shapes = _stored_shapes(weights_path)
        expected = [arch["k"], arch["hidden_size"]]
        if shapes.get("heads") != expected:
            raise RunConfigError(f"{cfg_path}: architecture says heads of shape {expected}, {weights_path.name} holds {shapes.get('heads')}")
        users = [len(arch.get("users", [])), arch["k"]] if arch.get("users") else None
        if shapes.get("user_logits") != users:
            raise RunConfigError(f"{cfg_path}: architecture says user logits of shape {users}, {weights_path.name} holds {shapes.get('user_logits')}")
    except RunConfigError as exc:
        raise RunConfigError(f"{exc}; {fix}.") from None
    model = MixtureRewardModel.from_architecture(arch)
    try:
        state = load_file(str(weights_path))
        bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if bad:
            raise RunConfigError(f"{weights_path} holds NaN or infinite values (in {', '.join(sorted(bad))}); {fix}.")
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise RunConfigError(f"{weights_path} does not match {cfg_path} ({first}); {fix}.") from None
    model.eval()
    return model, config
