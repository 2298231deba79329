"""The HDF5 cache format: one writer, one reader, and the checks that keep caches from mixing.

Layout (every embedding float16 on disk, contiguous, uncompressed):

    /                  attrs: format, format_version, complete, model_id, model_revision, pooling,
                       hidden_size, dtype, max_length, template, package_version, source_sha256,
                       context_in_sequence, attributes (JSON list), splits (JSON list), + free-form extras
    /sequences         embedding [N, d]   one row per distinct (prompt, response) sequence
                       prompt [N]         row in /prompts
                       text [N]           the response text
    /prompts           embedding [P, d]   router input of each distinct prompt
                       text [P]           the prompt as rendered for the model
    /contexts          text [C]           each distinct context string
    /context_prompts   embedding [Q, d]   router input of each distinct (context + prompt)
                       prompt [Q], context [Q]
    /context_sequences embedding [M, d]   optional: (context + prompt, response) rows
                       context_prompt [M], text [M]
    /pairs             chosen, rejected, prompt, context_prompt, chosen_context, rejected_context,
                       attribute, context, split   (int64 [n_pairs]; -1 where absent)

A cache is written whole to a temporary file and renamed into place, so a finished cache is complete
or absent; `complete` is set last as a second guard for files produced by other tools.

This module is the cache contract: the identity fields and their checks (`check_compatible`,
`check_same_table`), the context check (`missing_contexts`, `require_contexts`), and the readers every
later stage uses (`read_meta`, `load_split`, `load_texts`, `read_prompt_texts`, `cache_sizes`,
`read_extra_group`), which refuse missing datasets and non-finite embeddings with one CacheError line.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import h5py
import numpy as np
import torch

from ..outputs import atomic_file, check_space

FORMAT = "micro-embedcache"
FORMAT_VERSION = 1

#: Fields that must agree for two embeddings to be comparable (same backbone, same view of the text).
IDENTITY_FIELDS = ("model_id", "model_revision", "pooling", "hidden_size", "max_length", "template", "compute_dtype")
#: Fields that must agree before heads trained on one cache may score another cache's embeddings.
BACKBONE_FIELDS = ("model_id", "model_revision", "pooling", "hidden_size")
#: The hash of the preference table a cache was built from (`micro.data.table_sha256`).
TABLE_FIELD = "source_sha256"
#: What a run records of the cache it was fitted on (and later checks against the cache it is given).
RUN_FIELDS = IDENTITY_FIELDS + (TABLE_FIELD,)

PAIR_FIELDS = (
    "chosen",
    "rejected",
    "prompt",
    "context_prompt",
    "chosen_context",
    "rejected_context",
    "attribute",
    "context",
    "split",
)

_STR = h5py.string_dtype("utf-8")


class CacheError(ValueError):
    """A cache file that cannot be used as asked; the message says why and what to do."""


def describe_difference(expected: Mapping[str, Any], found: Mapping[str, Any], fields=IDENTITY_FIELDS) -> list[str]:
    """Human-readable list of the identity fields on which two metadata dicts disagree."""
    out = []
    for name in fields:
        a, b = expected.get(name), found.get(name)
        if a != b:
            out.append(f"{name}: expected {a!r}, found {b!r}")
    return out


def check_compatible(expected: Mapping[str, Any], found: Mapping[str, Any], *, what: str, fields=IDENTITY_FIELDS,
                     fix: str = "rebuild with the same `micro embed` settings") -> None:
    """Refuse (CacheError naming each differing field) metadata that disagrees with `expected` on `fields`."""
    diffs = describe_difference(expected, found, fields)
    if diffs:
        raise CacheError(
            f"{what} was made with another backbone or view of the text ("
            + "; ".join(diffs)
            + f"). Embeddings from different backbones cannot be mixed: {fix}."
        )


def cache_identity(meta: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The RUN_FIELDS of a cache's metadata (plus its resolved path): what a run records of its cache."""
    out = {name: meta.get(name) for name in RUN_FIELDS}
    if path is not None:
        out["path"] = str(Path(path).resolve())
    return out


def check_same_table(expected: Mapping[str, Any], found: Mapping[str, Any], *, what: str, path: Any = None) -> None:
    """Refuse a cache built from another preference table than `expected` (a run's recorded identity).

    Caches that do not record their table (older files, an empty hash) are not compared.
    """
    a, b = expected.get(TABLE_FIELD) or "", found.get(TABLE_FIELD) or ""
    if a and b and a != b:
        where = f" {path}" if path is not None else ""
        raise CacheError(
            f"the cache{where} was built from another table (sha256 {b[:12]}) than the one {what} was fitted on "
            f"(sha256 {a[:12]}); give the cache it was fitted on, or refit on this one."
        )


def _attr_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return value


def write_cache(
    path: str | os.PathLike,
    *,
    meta: Mapping[str, Any],
    sequences: Mapping[str, Any],
    prompts: Mapping[str, Any],
    pairs: Mapping[str, Any],
    attributes: list[str],
    splits: list[str],
    contexts: list[str] | None = None,
    context_prompts: Mapping[str, Any] | None = None,
    context_sequences: Mapping[str, Any] | None = None,
    extra_groups: Mapping[str, Mapping[str, Any]] | None = None,
    atomic: bool = True,
) -> Path:
    """Write a complete cache atomically (temporary file + rename; with `atomic=False`, straight into
    `path`, a temporary file the caller renames itself, e.g. from `micro.outputs.writing_file`).

    `sequences`, `prompts`, `context_prompts`, `context_sequences` map dataset names to arrays
    (embedding as [rows, d]; text as a list of str). `pairs` maps PAIR_FIELDS to int arrays; missing
    optional fields are filled with -1. `extra_groups` lets a producer (e.g. `micro simulate`) store
    its own arrays, which readers ignore.
    """
    path = Path(path)
    n_pairs = len(np.asarray(pairs["chosen"]))
    hidden = int(np.asarray(sequences["embedding"]).shape[1])
    arrays = [sequences, prompts, context_prompts or {}, context_sequences or {}, *(extra_groups or {}).values()]
    check_space(path, _estimate_bytes(arrays, n_pairs), "cache")
    with atomic_file(path, "cache") if atomic else nullcontext(path) as tmp:
        _write_file(tmp, meta, sequences, prompts, pairs, attributes, splits, contexts, context_prompts,
                    context_sequences, extra_groups, n_pairs, hidden)
    return path


def _estimate_bytes(groups: list[Mapping[str, Any]], n_pairs: int) -> int:
    """Bytes a cache will take on disk (embeddings as float16), to refuse a write the disk cannot hold."""
    total = len(PAIR_FIELDS) * 8 * n_pairs
    for arrays in groups:
        for name, arr in arrays.items():
            if isinstance(arr, (list, tuple)):
                total += sum(len(str(x).encode()) + 16 for x in arr)
            else:
                arr = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr)
                total += arr.size * 2 if name == "embedding" else arr.nbytes
    return total


def _write_file(tmp, meta, sequences, prompts, pairs, attributes, splits, contexts, context_prompts, context_sequences,
                extra_groups, n_pairs, hidden) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        for key, value in meta.items():
            f.attrs[key] = _attr_value(value)
        f.attrs["hidden_size"] = hidden
        f.attrs["dtype"] = "float16"
        f.attrs["attributes"] = json.dumps(list(attributes))
        f.attrs["splits"] = json.dumps(list(splits))
        f.attrs["context_in_sequence"] = context_sequences is not None
        groups = {"sequences": sequences, "prompts": prompts}
        if context_prompts is not None:
            groups["context_prompts"] = context_prompts
        if context_sequences is not None:
            groups["context_sequences"] = context_sequences
        for gname, arrays in {**groups, **(extra_groups or {})}.items():
            g = f.create_group(gname)
            for name, arr in arrays.items():
                _write_array(g, name, arr, embedding=(name == "embedding" and gname in groups))
        f.create_group("contexts").create_dataset("text", data=list(contexts or []), dtype=_STR)
        pg = f.create_group("pairs")
        for name in PAIR_FIELDS:
            arr = np.asarray(pairs[name], dtype=np.int64) if name in pairs else np.full(n_pairs, -1, np.int64)
            if arr.shape != (n_pairs,):
                raise ValueError(f"pairs[{name!r}] has shape {arr.shape}, expected ({n_pairs},)")
            pg.create_dataset(name, data=arr)
        f.attrs["complete"] = True


def _write_array(group: h5py.Group, name: str, arr: Any, *, embedding: bool) -> None:
    if isinstance(arr, (list, tuple)) and (not arr or isinstance(arr[0], str)):
        group.create_dataset(name, data=list(arr), dtype=_STR)
        return
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if embedding:
        arr = arr.astype(np.float16)
        if arr.ndim != 2:
            raise ValueError(f"{group.name}/{name} must be [rows, hidden], got shape {arr.shape}")
    group.create_dataset(name, data=arr)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a finished cache; refuses unfinished, foreign or unreadable files with a clear message."""
    path = Path(path)
    if path.is_dir():
        raise CacheError(f"cache {path} is a folder, not an HDF5 file: give the .h5 file written by `micro embed`.")
    if not path.exists():
        parts = path.with_name(path.name + ".parts")
        hint = (
            f" An unfinished run left {parts}: rerun the same `micro embed` command to finish it."
            if parts.exists()
            else " Build it with `micro embed` (or `micro simulate`)."
        )
        raise CacheError(f"cache {path} does not exist.{hint}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise CacheError(
            f"cache {path} is not a readable HDF5 file ({exc}). It may be truncated or corrupt: rebuild it with "
            "`micro embed ... --overwrite`."
        ) from None
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is an HDF5 file but not a micro embedding cache (no format={FORMAT!r} attribute).")
    try:
        version = int(attrs.get("format_version", -1))
        for key in ("attributes", "splits"):
            attrs[key] = json.loads(attrs.get(key) or "[]")
        attrs["hidden_size"] = int(attrs["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"cache {path} has damaged metadata ({type(exc).__name__}: {exc}); rebuild it with `micro embed ... --overwrite`.") from None
    if version > FORMAT_VERSION:
        raise CacheError(
            f"cache {path} has format version {version}, newer than this micro reads ({FORMAT_VERSION}): upgrade micro."
        )
    if not bool(attrs.get("complete", False)):
        raise CacheError(
            f"cache {path} is unfinished (its writer stopped before the end). Rerun the same `micro embed` command to finish it."
        )
    attrs["context_in_sequence"] = bool(attrs.get("context_in_sequence", False))
    return attrs


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[h5py.File]:
    """The cache file for reading; a missing dataset or unreadable block becomes one CacheError naming it."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except KeyError as exc:
        raise CacheError(
            f"cache {path} lacks a dataset it needs ({str(exc).strip(chr(34) + chr(39))}); the file is damaged or was not "
            "written by micro: rebuild it with `micro embed ... --overwrite`."
        ) from None
    except OSError as exc:
        raise CacheError(f"cache {path} could not be read ({exc}); it may be damaged: rebuild it with `micro embed ... --overwrite`.") from None


def _dataset(f: h5py.File, name: str) -> h5py.Dataset:
    if name not in f:
        raise KeyError(f"/{name}")
    return f[name]


def missing_contexts(split: "CacheSplit") -> int:
    """How many pairs of `split` have no (context + prompt) router input."""
    if split.context_embedding is None:
        return len(split)
    return int((split.context_index < 0).sum())


def require_contexts(split: "CacheSplit", what: str = "context routing") -> None:
    """Refuse (CacheError with the count) a split in which some pair has no (context + prompt) input."""
    missing = missing_contexts(split)
    if missing:
        where = f" of cache {split.path}" if split.path else ""
        raise CacheError(
            f"{missing} of {len(split)} pairs in split {split.split!r}{where} have no context; {what} needs a context "
            "for every pair: give the data a `context` column (--context-key) and rebuild the cache."
        )


def router_table(split: CacheSplit, source: str) -> "tuple[torch.Tensor, torch.Tensor]":
    """(table [rows, d], index [n]) such that table[index[i]] is pair i's router input."""
    if source == "prompt":
        return split.prompt_embedding, split.prompt_index
    if source == "context":
        require_contexts(split, "a router reading the context")
        return split.context_embedding, split.context_index
    raise ValueError(f"router input must be 'prompt' or 'context', not {source!r}")


@dataclass
class CacheSplit:
    """One split of a cache in RAM, ready for training on difference vectors.

    Router inputs are kept deduplicated: `prompt_embedding[prompt_index[i]]` is pair i's prompt
    embedding, `context_embedding[context_index[i]]` its (context + prompt) embedding (-1: no context).
    """

    split: str
    diff: torch.Tensor  # [n, d] chosen - rejected, float32
    prompt_index: torch.Tensor  # [n] long
    prompt_embedding: torch.Tensor  # [P, d]
    context_index: torch.Tensor  # [n] long, -1 where the pair has no context
    context_embedding: torch.Tensor | None  # [Q, d]
    attribute: torch.Tensor  # [n] long, index into `attributes`
    context_id: torch.Tensor  # [n] long, index into the cache's contexts, -1 where absent
    attributes: list[str]
    meta: dict[str, Any] = field(repr=False)
    pair_rows: np.ndarray = field(repr=False, default=None)  # rows of these pairs in /pairs
    path: str | None = field(repr=False, default=None)  # the cache file it was read from

    def __len__(self) -> int:
        return int(self.diff.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.diff.shape[1])

    @property
    def has_context(self) -> bool:
        """Some pair has a context."""
        return missing_contexts(self) < len(self)

    @property
    def all_have_context(self) -> bool:
        """Every pair has a context (and there is at least one pair)."""
        return len(self) > 0 and missing_contexts(self) == 0

    def prompt_inputs(self) -> torch.Tensor:
        """[n, d] router input of each pair's prompt (materialised; prefer the index form for big data)."""
        return self.prompt_embedding[self.prompt_index]

    def context_inputs(self) -> torch.Tensor:
        """[n, d] router input of each pair's (context + prompt); refuses pairs without context."""
        require_contexts(self)
        return self.context_embedding[self.context_index]

    def router_inputs(self, source: str) -> torch.Tensor:
        if source == "prompt":
            return self.prompt_inputs()
        if source == "context":
            return self.context_inputs()
        raise ValueError(f"router input must be 'prompt' or 'context', not {source!r}")

    def subset(self, index) -> "CacheSplit":
        index = torch.as_tensor(index, dtype=torch.long)
        return CacheSplit(
            split=self.split,
            diff=self.diff[index],
            prompt_index=self.prompt_index[index],
            prompt_embedding=self.prompt_embedding,
            context_index=self.context_index[index],
            context_embedding=self.context_embedding,
            attribute=self.attribute[index],
            context_id=self.context_id[index],
            attributes=self.attributes,
            meta=self.meta,
            pair_rows=None if self.pair_rows is None else self.pair_rows[index.numpy()],
            path=self.path,
        )


def split_fingerprint(split: CacheSplit, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What identifies the training data of a fit: the backbone, the table, the attributes and the pairs
    themselves (count and a checksum of their difference vectors)."""
    meta = split.meta if meta is None else meta
    return {
        "model_id": meta.get("model_id"),
        "model_revision": meta.get("model_revision"),
        TABLE_FIELD: meta.get(TABLE_FIELD),
        "attributes": list(meta.get("attributes", [])),
        "train_pairs": len(split),
        "diff_checksum": round(float(split.diff.double().sum()), 3),
    }


def _pair_difference(dataset: h5py.Dataset, chosen: np.ndarray, rejected: np.ndarray, block: int = 32768) -> np.ndarray:
    """emb[chosen] - emb[rejected] in float32, reading the float16 table once in row blocks.

    Peak memory is the [n, d] result plus one block, so a 700K-pair cache fits in RAM. The rows are gathered,
    widened and summed by torch (about 4x faster than numpy's float16 conversion).
    """
    out = torch.zeros(len(chosen), dataset.shape[1])
    if len(chosen) == 0:
        return out.numpy()
    lo = int(min(chosen.min(), rejected.min()))
    hi = int(max(chosen.max(), rejected.max())) + 1
    for start in range(lo, hi, block):
        stop = min(start + block, hi)
        rows = torch.from_numpy(dataset[start:stop])
        for index, sign in ((chosen, 1.0), (rejected, -1.0)):
            hit = np.flatnonzero((index >= start) & (index < stop))
            if len(hit):
                out.index_add_(0, torch.from_numpy(hit), rows[torch.from_numpy(index[hit] - start)].float(), alpha=sign)
    return out.numpy()


def _float32(values: np.ndarray) -> np.ndarray:
    """`values` as a float32 array (widened by torch: about 10x faster than numpy's float16 conversion)."""
    return torch.from_numpy(np.ascontiguousarray(values)).float().numpy()


def _table(f: h5py.File, path: Any, name: str) -> torch.Tensor:
    """A whole embedding table as float32, refused where it holds NaN or infinite values."""
    values = _float32(_dataset(f, name)[()])
    _check_finite(path, name, values, np.arange(len(values)))
    return torch.from_numpy(values)


def _check_finite(path: Any, dataset: str, values: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Refuse NaN/inf embeddings: name the dataset, how many rows, the first ones, and the fix.

    `rows` maps rows of `values` to rows of the dataset (for difference vectors: the pairs' rows)."""
    bad = ~np.isfinite(values).all(axis=1) if values.ndim == 2 else ~np.isfinite(values)
    if not bad.any():
        return
    where = np.flatnonzero(bad)
    if rows is not None:
        where = np.unique(rows[where])
    first = ", ".join(str(int(r)) for r in where[:5])
    raise CacheError(
        f"cache {path}: {len(where)} row(s) of /{dataset} hold NaN or infinite values (first: {first}); the backbone "
        "overflowed (float16 compute is the usual cause): rebuild the cache with `micro embed ... --dtype bf16 "
        "--overwrite` (or fp32)."
    )


def check_cache(f: h5py.File, path: Any, meta: Mapping[str, Any], pairs: Mapping[str, np.ndarray]) -> None:
    """Refuse a cache whose declared shapes or indices do not hold (one CacheError line naming the first
    fault): every embedding table has `hidden_size` columns, the pair columns have one length, and every
    pair index points at a row that exists (-1 where a column allows "absent")."""
    fix = "the file is damaged or was not written by micro: rebuild it with `micro embed ... --overwrite`."
    rows = {}
    for group in ("sequences", "prompts", "context_prompts", "context_sequences"):
        if group in ("sequences", "prompts") or (group in f and "embedding" in f[group]):  # the first two are required
            shape = _dataset(f, f"{group}/embedding").shape
            if len(shape) != 2 or (shape[0] and shape[1] != meta["hidden_size"]):
                raise CacheError(f"cache {path}: /{group}/embedding has shape {shape}, but the cache declares hidden_size "
                                 f"{meta['hidden_size']}; {fix}")
            rows[group] = shape[0]
    lengths = {len(v) for v in pairs.values()}
    if len(lengths) > 1:
        raise CacheError(f"cache {path}: the /pairs columns have different lengths {sorted(lengths)}; {fix}")
    n_contexts = len(f["contexts"]["text"]) if "contexts" in f and "text" in f["contexts"] else 0
    bounds = {  # column: (lowest allowed value, number of rows it indexes)
        "chosen": (0, rows.get("sequences", 0)), "rejected": (0, rows.get("sequences", 0)),
        "prompt": (0, rows.get("prompts", 0)), "context_prompt": (-1, rows.get("context_prompts", 0)),
        "chosen_context": (-1, rows.get("context_sequences", 0)), "rejected_context": (-1, rows.get("context_sequences", 0)),
        "attribute": (0, len(meta["attributes"])), "split": (0, len(meta["splits"])), "context": (-1, n_contexts),
    }
    for name, (low, count) in bounds.items():
        values = pairs.get(name)
        if values is None or not len(values):
            continue
        bad = np.flatnonzero((values < low) | (values >= count))
        if len(bad):
            row = int(bad[0])
            raise CacheError(f"cache {path}: /pairs/{name} of pair {row} is {int(values[row])}, outside 0..{count - 1}"
                             f"{' (or -1)' if low < 0 else ''} ({len(bad)} such pairs); {fix}")


def _split_difference(f: h5py.File, path: Any, split: str, sel: dict[str, np.ndarray], context_in_sequence: bool) -> np.ndarray:
    """[n, d] float32 chosen - rejected embeddings of the selected pairs, from the (context + prompt, response)
    table with `context_in_sequence`; a missing table, a pair without a context there, or a NaN/inf row is
    refused (CacheError naming the rows)."""
    if context_in_sequence:
        if "context_sequences" not in f:
            raise CacheError(
                f"cache {path} has no (context + prompt, response) embeddings; rebuild it with `micro embed --context-in-sequence`."
            )
        if (sel["chosen_context"] < 0).any():
            missing = int((sel["chosen_context"] < 0).sum())
            raise CacheError(
                f"{missing} of {len(sel['chosen_context'])} pairs in split {split!r} of cache {path} have no context, so no "
                "context-in-sequence embedding: give every pair a context, or drop --context-in-sequence."
            )
        name, chosen, rejected = "context_sequences/embedding", sel["chosen_context"], sel["rejected_context"]
    else:
        name, chosen, rejected = "sequences/embedding", sel["chosen"], sel["rejected"]
    emb = _dataset(f, name)
    diff = _pair_difference(emb, chosen, rejected)
    if not np.isfinite(diff).all():  # name the rows of the table that hold the NaN/inf
        bad = ~np.isfinite(diff).all(axis=1)
        suspects = np.unique(np.concatenate([chosen[bad], rejected[bad]]))
        _check_finite(path, name, _float32(emb[suspects]), suspects)
    return diff


def load_split(
    path: str | os.PathLike,
    split: str,
    *,
    context_in_sequence: bool = False,
    attributes: list[str] | None = None,
    meta: dict[str, Any] | None = None,
    tables: dict[str, Any] | None = None,
) -> CacheSplit:
    """Load one split into RAM as torch tensors.

    `context_in_sequence=True` takes the difference vectors from the (context + prompt, response)
    embeddings, as the paper's evaluation does; the cache must have been built with them.
    `attributes` keeps only pairs of those attributes. Non-finite embeddings are refused (CacheError).
    `meta`: the cache's `read_meta`, when the caller holds it already. `tables`: a dict kept by the caller
    across splits of this cache, in which the prompt and context embeddings (shared by every split) are
    read once.
    """
    meta = read_meta(path) if meta is None else meta
    if split not in meta["splits"]:
        raise CacheError(f"cache {path} has no split {split!r}; it has {meta['splits']}.")
    split_id = meta["splits"].index(split)
    with _open(path) as f:
        pairs = {name: _dataset(f, f"pairs/{name}")[()] for name in PAIR_FIELDS}
        check_cache(f, path, meta, pairs)
        keep = pairs["split"] == split_id
        if attributes is not None:
            unknown = sorted(set(attributes) - set(meta["attributes"]))
            if unknown:
                raise CacheError(f"cache {path} has no attribute(s) {unknown}; it has {meta['attributes']}.")
            ids = [meta["attributes"].index(a) for a in attributes]
            keep &= np.isin(pairs["attribute"], ids)
        rows = np.flatnonzero(keep)
        sel = {name: arr[rows] for name, arr in pairs.items()}
        diff = _split_difference(f, path, split, sel, context_in_sequence)
        tables = {} if tables is None else tables
        if "prompts" not in tables:
            tables["prompts"] = _table(f, path, "prompts/embedding")
            has_contexts = "context_prompts" in f and len(_dataset(f, "context_prompts/embedding"))
            tables["contexts"] = _table(f, path, "context_prompts/embedding") if has_contexts else None
        prompt_embedding, context_embedding = tables["prompts"], tables["contexts"]
    return CacheSplit(
        split=split,
        diff=torch.from_numpy(diff),
        prompt_index=torch.from_numpy(sel["prompt"]),
        prompt_embedding=prompt_embedding,
        context_index=torch.from_numpy(sel["context_prompt"]),
        context_embedding=context_embedding,
        attribute=torch.from_numpy(sel["attribute"]),
        context_id=torch.from_numpy(sel["context"]),
        attributes=list(meta["attributes"]),
        meta=meta,
        pair_rows=rows,
        path=str(path),
    )


def cache_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Rows per table of a cache: pairs, sequences, prompts, context_prompts, context_sequences (0: absent)."""
    with _open(path) as f:
        sizes = {"pairs": int(_dataset(f, "pairs/chosen").shape[0])}
        for group in ("sequences", "prompts", "context_prompts", "context_sequences"):
            sizes[group] = int(f[group]["embedding"].shape[0]) if group in f and "embedding" in f[group] else 0
    return sizes


def read_extra_group(path: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """A producer's own group (see write_cache's `extra_groups`) as {dataset: array or list of str}; None if absent."""
    with _open(path) as f:
        if name not in f:
            return None
        g = f[name]
        return {k: (g[k].asstr()[()].tolist() if g[k].dtype.kind == "O" else g[k][()]) for k in g}


def read_prompt_texts(path: str | os.PathLike, rows: Iterable[int]) -> list[str]:
    """The rendered text of the given rows of /prompts."""
    with _open(path) as f:
        text = _dataset(f, "prompts/text").asstr()
        return [text[int(r)] for r in rows]


def load_texts(path: str | os.PathLike, split: str | None = None) -> "Any":
    """The pairs of a cache as a pandas table of texts (prompt, chosen, rejected, attribute, context, split)."""
    import pandas as pd

    meta = read_meta(path)
    with _open(path) as f:
        pairs = {name: _dataset(f, f"pairs/{name}")[()] for name in PAIR_FIELDS}
        check_cache(f, path, meta, pairs)
        seq_text = _dataset(f, "sequences/text").asstr()[()]
        prompt_text = _dataset(f, "prompts/text").asstr()[()]
        contexts = f["contexts"]["text"].asstr()[()] if "contexts" in f else []
    table = pd.DataFrame(
        {
            "prompt": prompt_text[pairs["prompt"]],
            "chosen": seq_text[pairs["chosen"]],
            "rejected": seq_text[pairs["rejected"]],
            "attribute": np.asarray(meta["attributes"], dtype=object)[pairs["attribute"]],
            "context": [contexts[c] if c >= 0 else None for c in pairs["context"]],  # -1: no context
            "split": np.asarray(meta["splits"], dtype=object)[pairs["split"]],
        }
    )
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    return table
