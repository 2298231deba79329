"""`Cache`: one embedding cache opened once per command: its path, metadata and splits, each read once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .store import CacheError, CacheSplit, load_split, read_meta


class Cache:
    """An opened cache. `meta` is read (and checked) on opening; `split(name)` loads a split on first use
    and hands the same object to every later caller; the splits share one copy of the prompt and context
    embeddings."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta: dict[str, Any] = read_meta(self.path)
        self._splits: dict[tuple[str, bool], CacheSplit] = {}
        self._tables: dict[str, Any] = {}  # the prompt and context embeddings every split shares, read once

    @classmethod
    def of(cls, cache: "Cache | str | os.PathLike") -> "Cache":
        """`cache` itself when it is already open, else the cache at that path."""
        return cache if isinstance(cache, Cache) else cls(cache)

    def has(self, split: str) -> bool:
        return split in self.meta["splits"]

    def split(self, name: str, *, context_in_sequence: bool = False) -> CacheSplit:
        """The split `name` (its difference vectors from the (context + prompt, response) embeddings with
        `context_in_sequence`); CacheError names the splits the cache has."""
        key = (name, bool(context_in_sequence))
        if key not in self._splits:
            if not self.has(name):
                raise CacheError(f"cache {self.path} has no {name!r} split; it has {self.meta['splits']}.")
            self._splits[key] = load_split(self.path, name, context_in_sequence=context_in_sequence, meta=self.meta,
                                            tables=self._tables)
        return self._splits[key]

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"
