"""The embedding cache: run the frozen backbone once, then read its tensors for training.

`load_split(path, split)` is what later stages use; `write_cache` is the one writer of the format;
`embed_table(table, EmbedConfig(...), out=...)` builds a cache from a preference table (what `micro embed`
runs); `EmbedConfig` holds every default of that command.
"""

from .store import (
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    CacheError,
    CacheSplit,
    check_compatible,
    load_split,
    load_texts,
    read_meta,
    write_cache,
)
from .config import DEFAULT_MODEL, EmbedConfig
from .backbone import Backbone, load_backbone
from .plan import Jobs, Plan, build_plan, make_batches
from .runner import EmbedReport, embed_table

__all__ = [
    "DEFAULT_MODEL",
    "Backbone",
    "EmbedConfig",
    "EmbedReport",
    "Jobs",
    "Plan",
    "build_plan",
    "embed_table",
    "load_backbone",
    "make_batches",
    "FORMAT_VERSION",
    "IDENTITY_FIELDS",
    "CacheError",
    "CacheSplit",
    "check_compatible",
    "load_split",
    "load_texts",
    "read_meta",
    "write_cache",
]
