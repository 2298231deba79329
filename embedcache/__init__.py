"""The embedding cache: run the frozen backbone once, then read its tensors for training.

`load_split(path, split)` is what later stages use; `write_cache` is the one writer of the format.
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

__all__ = [
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
