"""The embedding cache: run the frozen backbone once, then read its tensors for training.

`load_split(path, split)` is what later stages use; `write_cache` is the one writer of the format;
`embed_table(table, model=..., out=...)` builds a cache from a preference table (what `micro embed` runs).
"""

from .store import (
    BACKBONE_FIELDS,
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    RUN_FIELDS,
    CacheError,
    CacheSplit,
    cache_identity,
    check_compatible,
    check_same_table,
    load_split,
    missing_contexts,
    require_contexts,
    load_texts,
    read_meta,
    write_cache,
)
from .backbone import DEFAULT_MODEL, Backbone, load_backbone
from .plan import Plan, build_plan, make_batches
from .runner import EmbedReport, embed_table

__all__ = [
    "DEFAULT_MODEL",
    "Backbone",
    "EmbedReport",
    "Plan",
    "build_plan",
    "embed_table",
    "load_backbone",
    "make_batches",
    "BACKBONE_FIELDS",
    "FORMAT_VERSION",
    "IDENTITY_FIELDS",
    "RUN_FIELDS",
    "CacheError",
    "CacheSplit",
    "cache_identity",
    "check_compatible",
    "check_same_table",
    "load_split",
    "missing_contexts",
    "require_contexts",
    "load_texts",
    "read_meta",
    "write_cache",
]
