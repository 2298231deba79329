"""Score new pairs for a user context with an adapted model, straight from embeddings.

    prm = load_adapted("runs/micro", "out/routers/b50_s0.safetensors")
    margins = prm.score(chosen_emb, rejected_emb, context_prompt_emb)   # > 0: chosen preferred
    rewards = prm.rewards(response_emb, context_prompt_emb)

`context_prompt_emb` is the backbone's router-input embedding of (context + prompt), as in the cache's
/context_prompts; response embeddings are the cache's /sequences rows (same backbone). With
`attribute=...` (and a router saved by `micro adapt` with micro-refine heads) the model scores with that
context's refined head instead: margin = head . d; with `attribute=..., refined=False` it scores as micro
for that context: the router's weights times the context's Hedge factor over its budget pairs
(AdaptConfig.context_rate), saved in the router's JSON as context_log_weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..heads.model import MixtureRewardModel, Router, load_model


class EmbeddingRewardModel(nn.Module):
    """Rewards from cached embeddings: frozen stage-1 heads + an adapted router (+ one context's log-weights
    from its budget pairs), or, for one context, its micro-refine head. On text: `micro.PersonalizedRewardModel`."""

    def __init__(self, heads_model: MixtureRewardModel, router: Router, *, head: torch.Tensor | None = None,
                 log_weights: torch.Tensor | None = None):
        super().__init__()
        self.heads_model = heads_model.eval()
        self.router = router.eval()
        self.register_buffer("head", None if head is None else head.detach().float().reshape(-1))
        self.register_buffer("log_weights", None if log_weights is None else log_weights.detach().float())

    @torch.no_grad()
    def weights(self, context_prompt_emb: torch.Tensor, log_weights: torch.Tensor | None = None) -> torch.Tensor:
        """[n, K] mixture weights on the stage-1 heads: softmax(router logits + the context's log-weights),
        f(x, c) when there are none. `log_weights` ([K] or [n, K]) replaces the model's own."""
        logits = self.router(context_prompt_emb.float())
        extra = self.log_weights if log_weights is None else log_weights
        return torch.softmax(logits if extra is None else logits + extra.to(logits), dim=-1)

    @torch.no_grad()
    def _linear_score(self, x: torch.Tensor, context_prompt_emb: torch.Tensor) -> torch.Tensor:
        """Rewards are linear in the embedding, so one scorer serves responses and difference vectors."""
        x = x.float()
        if self.head is not None:
            return x @ self.head
        return (self.weights(context_prompt_emb) * (x @ self.heads_model.head_vectors().T)).sum(-1)

    def margins(self, diff: torch.Tensor, context_prompt_emb: torch.Tensor) -> torch.Tensor:
        """[n] personalised reward margins from difference vectors (chosen - rejected embeddings)."""
        return self._linear_score(diff, context_prompt_emb)

    def score(self, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor, context_prompt_emb: torch.Tensor) -> torch.Tensor:
        """[n] r(chosen) - r(rejected) for the user context; > 0 means chosen is preferred."""
        return self.margins(chosen_emb.float() - rejected_emb.float(), context_prompt_emb)

    def rewards(self, response_emb: torch.Tensor, context_prompt_emb: torch.Tensor) -> torch.Tensor:
        """[n] personalised reward of each response (only differences between responses are meaningful)."""
        return self._linear_score(response_emb, context_prompt_emb)


def router_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(weights, config, refine weights) of a saved router, from any of them or their common stem."""
    path = Path(path)
    name = path.name
    for suffix in (".refine.safetensors", ".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = path.with_name(name)
    return stem.with_name(name + ".safetensors"), stem.with_name(name + ".json"), stem.with_name(name + ".refine.safetensors")


def save_router(path: str | Path, router: Router, info: dict[str, Any], refine: dict[str, Any] | None = None) -> Path:
    """Write router weights (safetensors) + a JSON config; `refine` = {"head" [A, d], "attributes": [...]}
    adds the micro-refine head of each attribute beside them."""
    weights, config, refine_path = router_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}, str(weights))
    linears = [m for m in router.net if isinstance(m, nn.Linear)]
    arch = {"kind": router.kind, "hidden_size": linears[0].in_features, "k": linears[-1].out_features,
            "width": linears[0].out_features if len(linears) > 1 else None}
    meta = {**info, "architecture": arch}
    if refine is not None:
        save_file({"head": refine["head"].detach().float().contiguous()}, str(refine_path))
        meta["refine_attributes"] = list(refine["attributes"])
    config.write_text(json.dumps(meta, indent=2) + "\n")
    return weights


def load_router(path: str | Path) -> tuple[Router, dict[str, Any]]:
    """A saved adapted router and its JSON config."""
    weights, config, _ = router_paths(path)
    for p in (weights, config):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: not a router saved by `micro adapt`.")
    try:
        meta = json.loads(config.read_text())
        arch = meta["architecture"]
        sizes = [arch["hidden_size"], arch["k"], arch["width"] or 128]
        if arch["kind"] not in ("mlp", "linear") or not all(type(v) is int and v >= 1 for v in sizes):
            raise ValueError(f"architecture {arch!r} is not valid")
        router = Router(arch["hidden_size"], arch["k"], arch["kind"], arch["width"] or 128)
        router.load_state_dict(load_file(str(weights)))
        router.mask_heads(meta.get("masked_heads") or [])  # the mask it was adapted with (not in the weights)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
        raise ValueError(f"router {config} is damaged ({type(exc).__name__}: {str(exc).strip().splitlines()[-1]}); rerun `micro adapt ... --overwrite`.") from None
    return router.eval(), meta


def saved_log_weights(router_path: str | Path, meta: dict[str, Any], attribute: str, k: int) -> torch.Tensor:
    """[K] the Hedge log-weights of `attribute` over its budget pairs, from a saved router's JSON `meta`."""
    table = meta.get("context_log_weights") or {}
    if attribute not in table:
        raise ValueError(f"no Hedge weights for attribute {attribute!r} in {router_paths(router_path)[1]} (it has: "
                         f"{sorted(table) or 'none'}; a router adapted with --context-rate 0 has none)")
    values = torch.tensor(table[attribute], dtype=torch.float32)
    if values.shape != (k,) or not torch.isfinite(values).all():
        raise ValueError(f"the Hedge weights of {attribute!r} in {router_paths(router_path)[1]} are damaged; rerun `micro adapt ... --overwrite`")
    return values


def load_adapted(run_dir: str | Path, router_path: str | Path, *, attribute: str | None = None,
                 refined: bool = True) -> EmbeddingRewardModel:
    """Stage-1 heads of `run_dir` + the adapted router at `router_path`; with `attribute`, that
    attribute's micro-refine head too (refused if the router was saved without one for it), or with
    `refined=False` micro for that attribute: the router plus its context log-weights."""
    heads_model, _ = load_model(run_dir)
    router, meta = load_router(router_path)
    if router.net[-1].out_features != heads_model.k:
        raise ValueError(f"router has {router.net[-1].out_features} outputs but {run_dir} has {heads_model.k} heads")
    if attribute is None:
        return EmbeddingRewardModel(heads_model, router)
    if not refined:
        return EmbeddingRewardModel(heads_model, router, log_weights=saved_log_weights(router_path, meta, attribute, heads_model.k))
    names = meta.get("refine_attributes") or []
    _, _, refine_path = router_paths(router_path)
    if attribute not in names or not refine_path.exists():
        raise ValueError(f"no micro-refine head for attribute {attribute!r} beside {router_path} (has: {names})")
    tensors = load_file(str(refine_path))
    i = names.index(attribute)
    return EmbeddingRewardModel(heads_model, router, head=tensors["head"][i])
