"""`open_sweep`: everything a `micro adapt` run reads, loaded and checked once (micro.router.plugin.Sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..embedcache.handle import Cache
from ..embedcache.store import CacheError, check_same_table, missing_contexts
from ..heads import MixtureConfig, check_cache_matches, load_run
from .config import AdaptConfig
from .draws import check_budgets
from .hedge import head_losses
from .plugin import Sweep
from .scores import Scores


def resolve_head_input(config: AdaptConfig, metas: list[dict], notes: list[str]) -> bool:
    """Whether the heads score (context + prompt, response) embeddings: 'context' demands them of every
    cache, 'auto' takes them when every cache has them."""
    have = all(m.get("context_in_sequence") for m in metas)
    if config.head_input == "context" and not have:
        raise CacheError("head_input 'context' needs caches built with `micro embed --context-in-sequence`; "
                         "rebuild the cache(s) with it or use --head-input response.")
    if config.head_input == "auto":
        notes.append("heads score (context + prompt, response) embeddings (section 5.3)." if have else
                     "the cache has no (context + prompt, response) embeddings: heads score (prompt, response) "
                     "embeddings (build it with `micro embed --context-in-sequence` for the paper's reading).")
    return config.head_input == "context" or (config.head_input == "auto" and have)


def _check_users(split, what: str, notes: list[str]) -> None:
    """Every pair has a context, or none has (then users are their attribute); a mix is refused."""
    missing = missing_contexts(split)
    if 0 < missing < len(split):
        raise CacheError(f"{missing} of the {len(split)} pairs of {what} have no context: give every pair a context "
                         "(the `context` column), or none (users are then known by their attribute alone).")
    if missing and not any("no contexts" in n for n in notes):
        notes.append("the pairs have no contexts: each user (attribute) is personalized from its budget pairs alone, "
                     "starting from the stage-1 routing.")


def open_sweep(cache: Cache | str | Path, run_dir: str | Path, out: Path, config: AdaptConfig, log: Callable[[str], None]) -> Sweep:
    """Load the stage-1 run and the cache(s) (one handle each), refuse mismatches in one line, and compute
    the frozen heads' margins once."""
    cache, run_dir = Cache.of(cache), Path(run_dir)
    model, run_config = load_run(run_dir)
    model = model.eval()
    model.mask_heads(config.mask_heads)
    if model.router is None:
        method = MixtureConfig.from_dict(run_config.get("config", run_config)).method
        raise ValueError(f"{run_dir} is a {method!r} run without a router; stage 2 adapts a `micro` run.")
    check_cache_matches(run_config, cache.meta, cache.path)
    notes: list[str] = []
    try:
        check_same_table(run_config.get("cache", {}), cache.meta, what=f"the run {run_dir}", path=cache.path)
    except CacheError as exc:
        if not config.cross_dataset:
            raise CacheError(f"{exc} For the cross-dataset setting (paper Table 4) pass --cross-dataset.") from None
        notes.append(f"cross-dataset: {cache.path} holds another table than the run's stage-1 cache.")
    evaluate = Cache(config.eval_cache) if config.eval_cache else cache
    if config.eval_cache:
        check_cache_matches(run_config, evaluate.meta, evaluate.path)
    for handle, split, use in ((cache, "train", "to draw the budget pairs from"), (evaluate, "test", "to evaluate on")):
        if not handle.has(split):
            raise CacheError(f"cache {handle.path} has no {split!r} split {use}.")
    augmented = resolve_head_input(config, [cache.meta, evaluate.meta], notes)
    train = cache.split("train", context_in_sequence=augmented)
    test = evaluate.split("test", context_in_sequence=augmented)
    eval_train = train
    if config.eval_cache:
        eval_train = evaluate.split("train", context_in_sequence=augmented) if evaluate.has("train") else None
        if eval_train is None:
            notes.append(f"{evaluate.path} has no train split: budget-bt, oracle and micro-refine are omitted.")
    _check_users(train, str(cache.path), notes)
    check_budgets(train, config.budgets, str(cache.path))
    if eval_train is not None and eval_train is not train:
        _check_users(eval_train, str(evaluate.path), notes)
        check_budgets(eval_train, config.budgets, str(evaluate.path))
    with torch.no_grad():  # masked heads: infinite loss, so Hedge gives them no mass
        train_margins = model.head_margins(train.diff)
        train_losses = head_losses(train_margins).masked_fill(model.head_mask, float("inf"))
        test_margins = model.head_margins(test.diff)
    return Sweep(config=config, cache=cache, evaluate=evaluate, run_dir=run_dir, run_config=run_config, model=model, train=train, test=test,
                 eval_train=eval_train, augmented=augmented, train_margins=train_margins, train_losses=train_losses,
                 test_margins=test_margins, scores=Scores(test=test), out=Path(out), log=log, notes=notes)
