"""One stage-1 run: cache in, run directory out (model.safetensors, config.json, metrics.json, heatmap)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..embedcache.store import CacheError, CacheSplit, check_compatible, load_split, read_meta
from .config import MixtureConfig
from .metrics import evaluate
from .model import MixtureRewardModel, load_model, save_model
from .train import fit_mixture

#: Cache metadata a run records and later checks (what makes two caches' embeddings comparable).
CACHE_IDENTITY = ("model_id", "model_revision", "pooling", "hidden_size", "max_length", "template", "source_sha256")
#: Fields that must agree before a run's heads may score another cache's embeddings.
BACKBONE_FIELDS = ("model_id", "model_revision", "pooling", "hidden_size")

UNIFORM_ROUTER = 0.98
COPIED_HEADS = 0.98


def cache_identity(meta: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any]:
    out = {name: meta.get(name) for name in CACHE_IDENTITY}
    if path is not None:
        out["path"] = str(Path(path).resolve())
    return out


def check_cache_matches(config: Mapping[str, Any], cache_meta: Mapping[str, Any]) -> None:
    """Refuse a cache made with another backbone (model_id, model_revision, pooling) or hidden size.

    `config` is a run's config.json as returned by `load_run` (its "cache" entry is used) or a flat dict
    of cache metadata. Raises CacheError naming each field that differs.
    """
    expected = config.get("cache", config)
    check_compatible(expected, cache_meta, what="this cache (compared with the one the heads were trained on)", fields=BACKBONE_FIELDS)


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


def _warnings(config: MixtureConfig, result: dict) -> list[str]:
    out = []
    entropy, agreement = result["router_entropy"], result["head_agreement"]
    if config.method == "micro" and entropy is not None and entropy > UNIFORM_ROUTER:
        out.append(
            f"The router is uniform (normalised entropy {entropy:.3f} > {UNIFORM_ROUTER}): its weights do not depend on "
            f"the {config.router_input}, so routing carries no information. "
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
    eval_split: str = "test",
    log: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Fit stage 1 on the cache's train split, evaluate on `eval_split`, write the run directory.

    With no test split in the cache (and eval_split='test'), 10 % of the train prompts (seeded by
    config.seed) are held out for evaluation, and metrics.json says so. Returns the metrics dict.
    """
    config = config or MixtureConfig()
    meta = read_meta(cache_path)
    warnings: list[str] = []
    train = load_split(cache_path, "train")
    if eval_split in meta["splits"]:
        test = load_split(cache_path, eval_split)
    elif eval_split == "test":
        train, test = holdout_by_prompt(train, 0.1, config.seed)
        warnings.append(
            f"The cache has no 'test' split: held out 10 % of the train prompts ({len(test)} pairs, seed {config.seed}) "
            "for evaluation and trained on the rest."
        )
    else:
        raise CacheError(f"cache {cache_path} has no split {eval_split!r}; it has {meta['splits']}.")
    if len(train) == 0:
        raise CacheError(f"cache {cache_path} has no training pairs.")

    config = config.resolved(train)
    start = time.perf_counter()
    model = fit_mixture(train, config, log=log)
    train_seconds = time.perf_counter() - start
    result = evaluate(model, test, config.router_input)
    warnings += _warnings(config, result)

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
