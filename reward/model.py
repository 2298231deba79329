"""`PersonalizedRewardModel`: a trained micro run that scores text.

    rm = PersonalizedRewardModel.from_run("runs/micro", router="adapt/routers/b50_s0.safetensors")
    rm.score(["How do I sort a list?"], ["Use sorted(xs)."], contexts=["I am a busy professional."])
    rm.compare(prompts, chosen, rejected, contexts)            # margins; > 0: chosen preferred

The backbone is the one named by the run's cache (model, revision, pooling, template, max length), and
text goes through `micro.embedcache.encode`, the code `micro embed` runs, so a reward from text equals
the reward from the cache's embedding of the same text. The reward of a response is w . e(prompt,
response) with w the stage-1 heads mixed by the router's weights for the prompt (or context + prompt),
a micro-refine head (`attribute=`), or one stage-1 head (`head=`). `heads_mask` gives heads zero weight
(router logits -inf before the softmax; the other heads' weights renormalise).

`micro.router.EmbeddingRewardModel` (router/api.py) is the embedding-level scorer `micro adapt` saves
routers for; this class is the one that reads text, and the one `micro` exports at its root.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..embedcache.backbone import Backbone, load_backbone
from ..embedcache.encode import embed_texts
from ..embedcache.store import CacheError
from ..heads.model import MixtureRewardModel, Router, build_mask, load_model, mask_logits
from ..router.api import load_router, router_paths, saved_log_weights

#: Fields of the run's cache identity the loaded backbone must reproduce (what makes embeddings equal).
TEXT_FIELDS = ("model_id", "model_revision", "pooling", "hidden_size", "max_length", "template")
#: The file beside a saved model's run files that says how to rebuild it.
SAVED_CONFIG = "micro_reward.json"


class PersonalizedRewardModel:
    """A micro run's reward on text: backbone + stage-1 heads (+ adapted router, micro-refine head, mask)."""

    def __init__(self, backbone: Backbone, heads_model: MixtureRewardModel, run_config: dict[str, Any], *,
                 router: Router | None = None, router_meta: dict[str, Any] | None = None,
                 head: torch.Tensor | None = None, heads_mask: Sequence[int] | None = None,
                 source: dict[str, Any] | None = None, batch_tokens: int | None = None,
                 log_weights: torch.Tensor | None = None):
        self.backbone = backbone
        self.heads_model = heads_model.eval()
        self.run_config = run_config
        self.router = None if router is None else router.eval()
        self.router_meta = router_meta or {}
        self.head = None if head is None else head.detach().float().reshape(-1)
        self.log_weights = None if log_weights is None else log_weights.detach().float().reshape(-1)  # a context's Hedge weights
        # the mask an adapted router was adapted with stays on; heads_mask adds to it
        self.heads_mask = sorted({int(k) for k in heads_mask or []} | set(self.router_meta.get("masked_heads") or []))
        self.source = source or {}
        self.batch_tokens = batch_tokens
        if self.heads_mask and self.head is not None:
            raise ValueError("heads_mask applies to the mixture of stage-1 heads, not to a single head "
                             "(attribute= or head=); drop one of them")
        self._mask = build_mask(heads_model.k, self.heads_mask)  # refuses unknown heads and masking every head
        self.user_state = None  # set by for_user

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, router: str | os.PathLike | None = None, attribute: str | None = None,
                 heads_mask: Sequence[int] | None = None, device: str | None = None, *, head: int | None = None, refine: bool = True,
                 backbone: str | None = None, dtype: str | None = None, batch_tokens: int | None = None) -> "PersonalizedRewardModel":
        """Load a `micro fit-mixture` run (+ a router saved by `micro adapt`) with the backbone its cache names.

        router: None scores with the run's own stage-1 weights. attribute: that attribute's micro-refine
        head saved beside `router`, or with refine=False micro for it (the router's weights times the
        attribute's Hedge weights over its budget pairs, saved in the router's JSON). head: stage-1 head N alone. backbone: load the backbone from this path
        or hub id instead of the one the cache names (a local copy); it must give the same pooling, hidden
        size, template and max length. dtype: compute dtype (default as `micro embed`: bf16 on GPU, fp32 on CPU).
        """
        run_dir = Path(run_dir)
        heads_model, config = load_model(run_dir)
        cache = config.get("cache") or {}
        if attribute is not None and router is None:
            raise ValueError(f"attribute {attribute!r} needs --router: micro-refine heads are saved beside the routers of `micro adapt`")
        if head is not None and not 0 <= head < heads_model.k:
            raise ValueError(f"head {head}: {run_dir} has heads 0..{heads_model.k - 1}")
        if head is not None and (router is not None or attribute is not None):
            raise ValueError("head= scores with one stage-1 head; it does not combine with router= or attribute=")
        router_model, router_meta, fixed, log_weights = None, {}, None, None
        if router is not None:
            router_model, router_meta = load_router(router)
            if router_model.net[-1].out_features != heads_model.k:
                raise ValueError(f"router {router} has {router_model.net[-1].out_features} outputs but {run_dir} has {heads_model.k} heads")
            if attribute is not None:
                if refine:
                    fixed = _refine_head(router, router_meta, attribute)
                else:
                    log_weights = saved_log_weights(router, router_meta, attribute, heads_model.k)
        if head is not None:
            fixed = heads_model.head_vectors()[head].detach()
        bb = _load_text_backbone(cache, backbone=backbone, device=device, dtype=dtype)
        source = {"run_dir": str(run_dir.resolve()), "router": None if router is None else str(router_paths(router)[0].resolve()),
                  "attribute": attribute, "refine": refine, "head": head, "backbone": backbone}
        return cls(bb, heads_model, config, router=router_model, router_meta=router_meta, head=fixed,
                   heads_mask=heads_mask, source=source, batch_tokens=batch_tokens, log_weights=log_weights)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | None = None, **kwargs: Any) -> "PersonalizedRewardModel":
        """Load a model written by `save_pretrained` (safetensors + JSON; the backbone loads by its identity)."""
        directory = Path(directory)
        cfg_file = directory / SAVED_CONFIG
        if not cfg_file.exists():
            raise FileNotFoundError(f"{cfg_file} not found: {directory} was not written by PersonalizedRewardModel.save_pretrained")
        saved = json.loads(cfg_file.read_text())
        router = directory / "router.safetensors" if saved.get("router") else None
        options = {k: saved.get(k) for k in ("attribute", "heads_mask", "head", "backbone")}
        options["refine"] = saved.get("refine", True)
        return cls.from_run(directory, router=router, device=device, **{**options, **kwargs})

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write this model (heads, router, refine heads: safetensors; configs: JSON) to a directory that is
        itself a run directory; `from_pretrained` rebuilds it. The backbone is referenced, not copied."""
        directory = Path(directory)
        prepare_output(directory, overwrite=overwrite, what="model directory")
        directory.mkdir(parents=True)
        run_dir = Path(self.source["run_dir"])
        for name in ("model.safetensors", "config.json", "metrics.json"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, directory / name)
        if self.source.get("router"):
            for src, dst in zip(router_paths(self.source["router"]), router_paths(directory / "router.safetensors")):
                if src.exists():
                    shutil.copy2(src, dst)
        saved = {"format": "micro-personalized-reward", "router": bool(self.source.get("router")),
                 "attribute": self.source.get("attribute"), "refine": self.source.get("refine", True), "head": self.source.get("head"),
                 "heads_mask": self.heads_mask, "backbone": self.source.get("backbone"),
                 "backbone_identity": self.backbone.identity(), "saved_from": self.source}
        (directory / SAVED_CONFIG).write_text(json.dumps(saved, indent=2) + "\n")
        return directory

    # ---- what the reward reads ----------------------------------------------------------------
    @property
    def router_input(self) -> str | None:
        """None (the weights do not depend on the text), 'prompt' or 'context' (context + prompt)."""
        if self.head is not None:
            return None
        if self.router is not None:
            return "context"  # stage 2 routes on (context + prompt)
        if self.heads_model.router is None:
            return None
        return "context" if self.run_config.get("config", {}).get("router_input") == "context" else "prompt"

    @torch.no_grad()
    def logits(self, router_inputs: torch.Tensor | None, n: int) -> torch.Tensor:
        """[n, K] routing logits before the heads mask (the stage-2 router's plus a context's Hedge weights,
        or the stage-1 router's)."""
        if self.router is not None:
            logits = self.router(router_inputs.float())
            if self.log_weights is not None:
                logits = logits + self.log_weights
            return logits.float()
        return self.stage1_logits(router_inputs, n)

    @torch.no_grad()
    def stage1_logits(self, prompt_inputs: torch.Tensor | None, n: int) -> torch.Tensor:
        """[n, K] the run's own (stage-1) routing logits on the prompt embeddings (constant for a static run)."""
        if self.heads_model.router is not None and prompt_inputs is not None:
            return self.heads_model.router_logits(prompt_inputs.float()).float()
        return self.heads_model.router_logits(torch.zeros(n, self.heads_model.hidden_size)).float()

    @torch.no_grad()
    def weights(self, router_inputs: torch.Tensor | None, n: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """[n, K] mixture weights on the stage-1 heads (masked heads get 0); offsets [n, K] are log-weights
        added to the logits (a user's Hedge weights)."""
        logits = self.logits(router_inputs, n)
        if offsets is not None:
            logits = logits + offsets.float()
        return torch.softmax(mask_logits(logits, self._mask), dim=-1)

    @torch.no_grad()
    def fixed_head(self) -> torch.Tensor:
        """[d] the reward's one direction when it does not depend on the prompt or context (a micro-refine or
        stage-1 head, a single or static run); refuses a routed model."""
        if self.head is not None:
            return self.head.clone()
        if self.router_input is not None and self.heads_model.k > 1:
            raise ValueError("this reward mixes several heads with weights that depend on the prompt/context, so no one "
                             "head reproduces it: pick one user (--router R --attribute A, --head N, or a --method single run)")
        w = self.weights(None if self.router_input is None else torch.zeros(1, self.heads_model.hidden_size), 1)[0]
        return w @ self.heads_model.head_vectors().detach().float()

    @torch.no_grad()
    def rewards_from_embeddings(self, sequence: torch.Tensor, router_inputs: torch.Tensor | None = None,
                                offsets: torch.Tensor | None = None) -> torch.Tensor:
        """[n] rewards of response embeddings (the cache's /sequences rows) given their router inputs
        (and optional [n, K] log-weight offsets: users' Hedge weights)."""
        sequence = torch.as_tensor(sequence).float()
        if self.head is not None:
            return sequence @ self.head
        w = self.weights(None if router_inputs is None else torch.as_tensor(router_inputs), sequence.shape[0], offsets)
        return (w * self.head_rewards(sequence)).sum(-1)

    @torch.no_grad()
    def head_rewards(self, sequence: torch.Tensor) -> torch.Tensor:
        """[n, K] each stage-1 head's reward of response embeddings [n, d]."""
        return torch.as_tensor(sequence).float() @ self.heads_model.head_vectors().detach().float().T

    @torch.no_grad()
    def rewards_from_text_embeddings(self, emb, users: Sequence[Any] | None = None,
                                     contexts: Sequence[str | None] | None = None) -> np.ndarray:
        """[n] rewards of `embed`'s output; users: one UserState (reward/users.py) or None per row. A known
        user's Hedge log-weights are added to the row's routing logits; a known user whose row has no
        context is routed by the stage-1 prompt router (stage 2 routes (context + prompt)), plus the user's
        own stage-1 logits where the run learned them (`micro adapt`'s rule for users without context)."""
        router_in = None if self.router_input is None else (emb.context_prompt if self.router_input == "context" else emb.prompt)
        router_in = None if router_in is None else torch.from_numpy(router_in)
        sequence = torch.from_numpy(emb.sequence)
        if users is None or all(u is None for u in users):
            return self.rewards_from_embeddings(sequence, router_in).numpy()
        if self.head is not None:
            raise ValueError("a per-user reward mixes the stage-1 heads; this model scores with one head (attribute= or head=)")
        n = sequence.shape[0]
        logits = self.logits(router_in, n)
        offsets = torch.zeros_like(logits)
        stage1 = torch.tensor([u is not None and self.router is not None and not (contexts and contexts[i]) for i, u in enumerate(users)])
        if stage1.any():
            prompt_in = None if emb.prompt is None else torch.from_numpy(emb.prompt)
            logits[stage1] = self.stage1_logits(prompt_in, n)[stage1]
        rate = self.user_rate
        for i, u in enumerate(users):
            if u is not None:
                offsets[i] = u.log_weights(rate).float()
                own = None if contexts and contexts[i] else self.heads_model.user_log_weights(u.user)
                if own is not None:  # a user stage 1 learned a routing for (data without contexts): theirs, as in stage 2
                    offsets[i] += own.float()
        w = torch.softmax(mask_logits(logits + offsets, self._mask), dim=-1)
        return (w * self.head_rewards(sequence)).sum(-1).numpy()

    @property
    def user_rate(self) -> float:
        """Hedge's rate for online users: AdaptConfig.context_rate, the rate `micro adapt` uses."""
        from ..router.config import AdaptConfig

        return AdaptConfig().context_rate

    def for_user(self, store, user: str) -> "PersonalizedRewardModel":
        """This model scoring for `user` of a UserStore (reward/users.py) with their current Hedge state
        (and their context where a row gives none); an unknown user scores as this model does."""
        model = copy.copy(self)
        model.user_state = self.user_or_stage1(store.get(user), user)
        return model

    def user_or_stage1(self, state, user: str):
        """`state`, or for a user without one whom stage 1 learned a routing for, a state without feedback
        (so that their own routing applies before their first pair)."""
        from .users import UserState

        if state is None and self.heads_model.user_log_weights(user) is not None:
            return UserState(user, np.zeros(self.heads_model.k), 0, None, 0.0)
        return state

    def head_margins(self, prompts: Sequence[Any], chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
        """[n, K] each stage-1 head's margin r_k(chosen) - r_k(rejected): what a user's feedback adds to Hedge."""
        n = len(prompts)
        emb = embed_texts(self.backbone, list(prompts) * 2, list(chosen) + list(rejected), None, router_input=None,
                          batch_tokens=self.batch_tokens)
        r = self.head_rewards(torch.from_numpy(emb.sequence)).double()
        return (r[:n] - r[n:]).numpy()

    # ---- text -----------------------------------------------------------------------------------
    def embed(self, prompts: Sequence[Any], responses: Sequence[str], contexts: Sequence[str | None] | None = None,
              on_batch: Callable[[int, int], None] | None = None):
        """The backbone embeddings these rows need (`micro.embedcache.encode.TextEmbeddings`)."""
        return embed_texts(self.backbone, list(prompts), list(responses), _contexts(contexts, len(prompts)),
                           router_input=self.router_input, batch_tokens=self.batch_tokens, on_batch=on_batch)

    def score(self, prompts: Sequence[Any], responses: Sequence[str], contexts: Sequence[str | None] | str | None = None,
              *, on_batch: Callable[[int, int], None] | None = None, users: Sequence[Any] | None = None) -> np.ndarray:
        """[n] reward of each (prompt, response) for its user context. A prompt is a string or a conversation
        (list of {role, content}); contexts: one per row, one string for all rows, or None. users: one
        UserState or None per row (default: the user of `for_user`, if any); a user's stored context
        applies where a row gives none."""
        n = len(prompts)
        if users is None and self.user_state is not None:
            users = [self.user_state] * n
        contexts = _contexts(contexts, n)
        if users is not None:
            if len(users) != n:
                raise ValueError(f"got {len(users)} users for {n} rows; give one per row")
            contexts = [(contexts[i] if contexts and contexts[i] is not None else (u.context if u is not None else None)) for i, u in enumerate(users)]
            contexts = contexts if any(c is not None for c in contexts) else None
        emb = self.embed(prompts, responses, contexts, on_batch)
        return self.rewards_from_text_embeddings(emb, users, contexts)

    def compare(self, prompts: Sequence[Any], chosen: Sequence[str], rejected: Sequence[str],
                contexts: Sequence[str | None] | str | None = None, *, on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """[n] margins r(chosen) - r(rejected); > 0 means chosen is preferred."""
        n = len(prompts)
        if len(chosen) != n or len(rejected) != n:
            raise ValueError(f"prompts, chosen and rejected must have the same length; got {n}, {len(chosen)}, {len(rejected)}")
        ctx = _contexts(contexts, n)
        r = self.score(list(prompts) * 2, list(chosen) + list(rejected), None if ctx is None else ctx * 2, on_batch=on_batch)
        return r[:n] - r[n:]

    __call__ = score

    def describe(self) -> dict[str, Any]:
        """Provenance: backbone identity, the run's cache and config, router and user choice."""
        return {"backbone": self.backbone.identity(), "cache": self.run_config.get("cache"),
                "run_config": self.run_config.get("config"), "router": self.router_meta or None,
                "source": self.source, "heads_mask": self.heads_mask, "router_input": self.router_input}


def _contexts(contexts, n: int) -> list[str | None] | None:
    if contexts is None or isinstance(contexts, str):
        return None if contexts is None else [contexts] * n
    contexts = list(contexts)
    if len(contexts) != n:
        raise ValueError(f"got {len(contexts)} contexts for {n} rows; give one per row, one string, or none")
    return contexts


def _refine_head(router: str | os.PathLike, meta: dict[str, Any], attribute: str) -> torch.Tensor:
    from safetensors.torch import load_file

    names = meta.get("refine_attributes") or []
    refine_path = router_paths(router)[2]
    if attribute not in names or not refine_path.exists():
        raise ValueError(f"no micro-refine head for attribute {attribute!r} beside {router} (it has: {names or 'none'})")
    return load_file(str(refine_path))["head"][names.index(attribute)]


def _load_text_backbone(cache: dict[str, Any], *, backbone: str | None, device: str | None, dtype: str | None) -> Backbone:
    """The backbone of the run's cache, refused when it would not reproduce the cache's embeddings."""
    if not cache.get("model_id"):
        raise CacheError("the run's config.json records no backbone (model_id): it was fitted on a cache without one "
                         "(e.g. `micro simulate`), so it cannot score text")
    bb = load_backbone(backbone or cache["model_id"], device=device, dtype=dtype, max_length=cache.get("max_length"))
    fields = TEXT_FIELDS if backbone is None else tuple(f for f in TEXT_FIELDS if f not in ("model_id", "model_revision"))
    ident = bb.identity()
    diffs = [f"{f}: run {cache.get(f)!r}, backbone {ident.get(f)!r}" for f in fields if cache.get(f) is not None and cache.get(f) != ident.get(f)]
    if diffs:
        raise CacheError(f"the backbone {backbone or cache['model_id']} would not reproduce the run's cache ({'; '.join(diffs)}); "
                         "load the exact model the cache was built with (pass backbone= a local copy of it)")
    return bb


def prepare_output(path: Path, *, overwrite: bool, what: str) -> None:
    """Refuse an existing output unless overwrite; with overwrite, remove it first."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{what} {path} already exists; pass --overwrite (overwrite=True) to replace it")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


__all__ = ["PersonalizedRewardModel", "prepare_output"]
