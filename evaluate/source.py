"""From SOURCE to the pairs a run scores: embed through the run's backbone into a reusable cache, load
every pair of every split.

`micro embed`'s machinery does the embedding (`embed_table`): a cache already made from the same table
with the same backbone is left alone, and one made from another table is rebuilt reusing the embeddings
it has, so re-evaluating never re-embeds what is there. An existing `.h5` cache may be the source itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..embedcache import CacheError, CacheSplit, embed_table, load_split, read_meta
from ..heads import check_cache_matches


def is_cache(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and str(source).endswith((".h5", ".hdf5")) and Path(source).is_file()


def prepare_cache(
    run_config: dict,
    source: Any,
    cache: str | os.PathLike,
    *,
    context: str | None = None,
    device: str | None = None,
    batch_tokens: int | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """The cache holding SOURCE's embeddings by the run's backbone. `source`: a preference table (embedded
    into `cache`) or the path of a finished cache (checked and used as is). `context` replaces every
    pair's context before embedding. Refuses a cache made with another backbone (CacheError)."""
    if is_cache(source):
        if context is not None:
            raise CacheError(f"--context cannot be applied to the ready-made cache {source}; give the source data instead")
        path = Path(source)
    else:
        table = source.copy()
        if context is not None:
            table["context"] = context
        backbone = run_config["cache"]
        path = Path(cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = embed_table(table, model=backbone["model_id"], out=path, max_length=backbone.get("max_length"),
                             device=device, batch_tokens=batch_tokens, log=log)
        if not report.noop:
            log(f"embedded {report.n_pairs} pairs ({report.forward_sequences} forward passes, "
                f"{report.reused_from_cache} rows reused) into {path}")
    check_cache_matches(run_config, read_meta(path), path)
    return path


def load_pairs(path: str | os.PathLike) -> CacheSplit:
    """Every pair of every split of a cache as one CacheSplit (its `split` is the splits joined by '+')."""
    meta = read_meta(path)
    parts = [load_split(path, s) for s in meta["splits"]]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise CacheError(f"cache {path} holds no pairs")
    first = parts[0]
    if len(parts) == 1:
        return first
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return CacheSplit(
        split="+".join(p.split for p in parts), diff=cat("diff"), prompt_index=cat("prompt_index"),
        prompt_embedding=first.prompt_embedding, context_index=cat("context_index"),
        context_embedding=first.context_embedding, attribute=cat("attribute"), context_id=cat("context_id"),
        attributes=first.attributes, meta=first.meta, pair_rows=np.concatenate([p.pair_rows for p in parts]),
    )


def router_inputs(split: CacheSplit, source: str) -> tuple[torch.Tensor, int]:
    """([n, d] router input per pair, pairs that fell back to the prompt embedding). `source` 'context':
    the (context + prompt) embedding where the pair has a context, else its prompt embedding; 'prompt':
    the prompt embedding."""
    prompts = split.prompt_inputs()
    if source != "context" or split.context_embedding is None:
        return prompts, len(split) if source == "context" else 0
    has = split.context_index >= 0
    out = prompts.clone()
    out[has] = split.context_embedding[split.context_index[has]]
    return out, int((~has).sum())
