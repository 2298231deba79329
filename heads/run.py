"""One stage-1 run: cache in, run directory out (model.safetensors, config.json, metrics.json, heatmap)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..outputs import diff_fields, refuse_existing, relocate, writing_dir
from ..embedcache.handle import Cache
from ..embedcache.store import BACKBONE_FIELDS, RUN_FIELDS, CacheError, CacheSplit, cache_identity, check_compatible, load_split, read_meta
from .config import EVAL_SPLIT, MixtureConfig
from .metrics import evaluate
from .model import MixtureRewardModel, load_model, save_model
from .fit import fit_mixture

#: Cache metadata a run records and later checks (defined with the cache format in embedcache.store).
CACHE_IDENTITY = RUN_FIELDS

UNIFORM_ROUTER = 0.98
COPIED_HEADS = 0.98


def check_cache_matches(config: Mapping[str, Any], cache_meta: Mapping[str, Any], path: Any = None) -> None:
    """Refuse a cache made with another backbone (model_id, model_revision, pooling), hidden size or max length.

    `config` is a run's config.json as returned by `load_run` (its "cache" entry is used) or a flat dict
    of cache metadata; `path` names the cache in the message. Raises CacheError naming each field that
    differs: the max length is part of a cache's identity (texts cut at another length embed differently).
    """
    expected = config.get("cache", config)
    name = f"the cache {path}" if path is not None else "this cache"
    check_compatible(expected, cache_meta, what=f"{name} (compared with the one the heads were trained on)", fields=BACKBONE_FIELDS,
                     fix="give a cache embedded with the backbone the run was fitted on")
    trained, given = expected.get("max_length"), cache_meta.get("max_length")
    if trained != given:
        redo = f"`micro embed ... --max-length {trained}`" if isinstance(trained, int) and trained > 0 else "the run's `micro embed` settings"
        shown = lambda n: "unrecorded" if n in (None, "") else n  # noqa: E731
        raise CacheError(f"{name} was embedded with max_length {shown(given)}, but the run's training cache with max_length {shown(trained)}: "
                         f"texts cut at another length embed differently; re-embed it with {redo}, or give a cache of that max length.")


def load_run(run_dir: str | os.PathLike) -> tuple[MixtureRewardModel, dict[str, Any]]:
    """(model, config.json as a dict): dict["config"] holds the MixtureConfig fields
    (`MixtureConfig.from_dict(cfg["config"])`), dict["cache"] the training cache's identity."""
    return load_model(run_dir)


def holdout_by_prompt(train: CacheSplit, fraction: float = 0.1, seed: int = 0) -> tuple[CacheSplit, CacheSplit]:
    """Split pairs into (train, held-out) so that no prompt is in both; `fraction` of the prompts held out."""
    prompts = torch.unique(train.prompt_index).numpy()
    rng = np.random.default_rng(seed)
    held = rng.permutation(prompts)[: max(1, int(round(fraction * len(prompts))))]
    mask = np.isin(train.prompt_index.numpy(), held)
    if mask.all() or not mask.any():
        raise CacheError("cannot hold out test prompts: the train split has too few distinct prompts; add a test split.")
    held_split = train.subset(np.flatnonzero(mask))
    held_split.split = "heldout"
    return train.subset(np.flatnonzero(~mask)), held_split


def train_and_eval_splits(cache: "Cache | str | os.PathLike", eval_split: str, seed: int) -> tuple[CacheSplit, CacheSplit, list[str]]:
    """(train, evaluation split, warnings) of a cache (a path or an open `Cache`): `eval_split` when the
    cache has it; without a 'test' split, 10 % of the train prompts (seeded) held out, with a warning."""
    warnings: list[str] = []
    cache = Cache.of(cache)
    cache_path, meta = cache.path, cache.meta
    train = cache.split("train")
    if eval_split in meta["splits"]:
        test = cache.split(eval_split)
    elif eval_split == EVAL_SPLIT:
        train, test = holdout_by_prompt(train, 0.1, seed)
        warnings.append(
            f"The cache has no 'test' split: held out 10 % of the train prompts ({len(test)} pairs, seed {seed}) "
            "for evaluation and trained on the rest."
        )
    else:
        raise CacheError(f"cache {cache_path} has no split {eval_split!r}; it has {meta['splits']}.")
    if len(train) == 0:
        raise CacheError(f"cache {cache_path} has no training pairs.")
    return train, test, warnings


@torch.no_grad()
def evaluate_users(model: MixtureRewardModel, split: CacheSplit, router_input: str = "prompt") -> dict[str, Any] | None:
    """The routing of each seen user on `split` (f = softmax(router(x) + u_user)); None for a model without users.

    {"users": the model's user count, "per_attribute": {attr: {routed_accuracy, pairs}} for the attributes the
    model has seen, "average": {routed_accuracy} (unweighted over those attributes), "router_entropy": the mean
    normalised entropy of the users' weights (1.0 = uniform; None for K = 1), "unseen": the split's attributes
    the model has no logits for (routed by the router alone, as in "test")}."""
    if not model.user_names:
        return None
    from ..embedcache.rows import user_rows
    from ..embedcache.store import router_table

    users = user_rows(split, model.user_names)
    table, index = router_table(split, router_input)
    log_w = model.log_weights(table[index].float(), users)
    routed = ((log_w.exp() * (split.diff.float() @ model.head_vectors().T)).sum(-1) > 0).float()
    per = {}
    for a, name in enumerate(split.attributes):
        mask = (split.attribute == a) & (users >= 0)
        if bool(mask.any()):
            per[name] = {"routed_accuracy": float(routed[mask].mean()), "pairs": int(mask.sum())}
    seen = users >= 0
    entropy = float(-(log_w.exp() * log_w.clamp_min(-1e30)).sum(-1)[seen].mean() / math.log(model.k)) if model.k > 1 and bool(seen.any()) else None
    unseen = sorted({split.attributes[int(a)] for a in split.attribute[~seen].unique().tolist() if a >= 0})
    return {"users": len(model.user_names), "per_attribute": per,
            "average": {"routed_accuracy": sum(v["routed_accuracy"] for v in per.values()) / max(1, len(per))},
            "router_entropy": entropy, "unseen": unseen}


def _warnings(config: MixtureConfig, result: dict, users: dict | None = None) -> list[str]:
    out = []
    entropy, agreement = result["router_entropy"], result["head_agreement"]
    if users is not None:  # the users' own weights are the routing of this model
        entropy = users["router_entropy"]
    if config.method == "micro" and entropy is not None and entropy > UNIFORM_ROUTER:
        out.append(
            f"The router is uniform (normalised entropy {entropy:.3f} > {UNIFORM_ROUTER}): its weights do not depend on "
            f"the {'user' if users is not None else config.router_input}, so routing carries no information. "
            + (
                f"The per-example entropy term (eq. 4, alpha={config.alpha}) can pin the router there; try --balance batch or a smaller --alpha."
                if config.balance == "example" and config.alpha > 0
                else "The data may hold no group structure the router can see."
            )
        )
    if config.num_heads > 1 and agreement > COPIED_HEADS:
        out.append(
            f"The heads are copies of each other (they agree on {agreement:.1%} of {result['overall']['pairs']} evaluation pairs): "
            "the mixture found no distinct preferences. Check the router warning, or the data may hold none the "
            "router can see (prompts that hint at the group)."
        )
    return out


def run_fit_mixture(
    cache_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MixtureConfig | None = None,
    *,
    eval_split: str = EVAL_SPLIT,
    log: Callable[[dict], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit stage 1 on the cache's train split, evaluate on `eval_split`, write the run directory.

    With no test split in the cache (and eval_split='test'), 10 % of the train prompts (seeded by
    config.seed) are held out for evaluation, and metrics.json says so. Returns the metrics dict.

    The run is written into a temporary sibling folder and renamed into place when complete; an existing
    non-empty `out_dir` is refused (naming what differs) unless `overwrite`. One writer per folder.
    """
    config = config or MixtureConfig()
    out_dir = Path(out_dir)
    refuse = lambda: refuse_existing(out_dir, "a run", _run_differences(out_dir, config, cache_path))  # noqa: E731
    with writing_dir(out_dir, overwrite=overwrite, what="run folder", inputs=[cache_path], existing=refuse) as tmp:
        metrics = relocate(_fit_into(cache_path, tmp, config, eval_split, log), tmp, out_dir)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _run_differences(out_dir: Path, config: MixtureConfig, cache_path) -> list[str]:
    """What separates the run in `out_dir` from the one `config` on `cache_path` would write."""
    try:
        old = json.loads((out_dir / "config.json").read_text())
        old_config, old_cache = dict(old["config"]), dict(old["cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return [f"it is not a finished `micro fit-mixture` run ({len(list(out_dir.iterdir()))} entries)"]
    new_config = config.to_dict()
    for name, undecided in (("router_input", "auto"), ("batch_size", None)):  # decided by the cache: compare the rest
        if name in new_config and new_config[name] == undecided:
            new_config.pop(name)
    diffs = diff_fields(old_config, new_config, new_config)
    try:
        new_cache = cache_identity(read_meta(cache_path), cache_path)
        diffs += diff_fields(old_cache, new_cache, prefix="cache ")
    except CacheError:
        pass  # the fit itself reports an unusable cache
    return diffs


def _fit_into(cache_path, out_dir: Path, config: MixtureConfig, eval_split: str, log) -> dict[str, Any]:
    cache = Cache.of(cache_path)
    meta, cache_path = cache.meta, cache.path
    train, test, warnings = train_and_eval_splits(cache, eval_split, config.seed)

    start = time.perf_counter()
    model = fit_mixture(train, config, log=log)  # router_input 'auto' decides users there
    config = config.resolved(train)
    train_seconds = time.perf_counter() - start
    result = evaluate(model, test, config.router_input)
    users = evaluate_users(model, test, config.router_input)
    warnings += _warnings(config, result, users)

    out_dir = Path(out_dir)
    run_config = {"config": config.to_dict(), "cache": cache_identity(meta, cache_path), "eval_split": test.split}
    save_model(model, out_dir, run_config)
    metrics = {
        "method": config.method,
        "k": model.k,
        "train_seconds": train_seconds,
        "train_pairs": len(train),
        "train_steps": model.train_steps,
        "train_loss": model.train_history,
        "fit": model.fit_record.to_dict(),
        "config": config.to_dict(),
        "cache": run_config["cache"],
        "eval_split": test.split,
        "test": {k: result[k] for k in ("per_attribute", "average", "overall")},
        "router_entropy": result["router_entropy"],
        "head_agreement": result["head_agreement"],
        **({"users": users} if users is not None else {}),
        "warnings": warnings,
        "files": {"model": str(out_dir / "model.safetensors"), "config": str(out_dir / "config.json")},
    }
    try:
        from .plots import heldout_curve, router_heatmap

        path = router_heatmap(model, test, out_dir / "router_heatmap.png", config.router_input, cache_path=cache_path)
        if path is not None:
            metrics["files"]["router_heatmap"] = str(path)
        path = heldout_curve(metrics["fit"], out_dir / "heldout_curve.png")
        if path is not None:
            metrics["files"]["heldout_curve"] = str(path)
    except ImportError:  # matplotlib is optional
        pass
    metrics["files"]["metrics"] = str(out_dir / "metrics.json")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
