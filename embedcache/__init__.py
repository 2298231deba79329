"""The embedding cache: run the frozen backbone once, then read its tensors for training.

`load_split(path, split)` is what later stages use; `write_cache` is the one writer of the format;
`embed_table(table, EmbedConfig(...), out=...)` builds a cache from a preference table (what `micro embed`
runs); `EmbedConfig` holds every default of that command.
"""

from ..lazy import lazy_exports

# Names load on first use, so `import micro.embedcache.config` (what the CLI reads its options from)
# does not import torch.
_EXPORTS = {
    "BACKBONE_FIELDS": ".store",
    "FORMAT_VERSION": ".store",
    "IDENTITY_FIELDS": ".store",
    "RUN_FIELDS": ".store",
    "CacheError": ".store",
    "CacheSplit": ".store",
    "cache_identity": ".store",
    "check_compatible": ".store",
    "check_same_table": ".store",
    "load_split": ".store",
    "missing_contexts": ".store",
    "require_contexts": ".store",
    "load_texts": ".store",
    "read_meta": ".store",
    "write_cache": ".store",
    "DEFAULT_MODEL": ".config",
    "EmbedConfig": ".config",
    "Backbone": ".backbone",
    "load_backbone": ".backbone",
    "Jobs": ".plan",
    "Plan": ".plan",
    "build_plan": ".plan",
    "make_batches": ".batches",
    "EmbedReport": ".runner",
    "embed_table": ".runner",
}


__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
