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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

FORMAT = "micro-embedcache"
FORMAT_VERSION = 1

#: Fields that must agree for two embeddings to be comparable (same backbone, same view of the text).
IDENTITY_FIELDS = ("model_id", "model_revision", "pooling", "hidden_size", "max_length", "template", "compute_dtype")

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


def check_compatible(expected: Mapping[str, Any], found: Mapping[str, Any], *, what: str, fields=IDENTITY_FIELDS) -> None:
    diffs = describe_difference(expected, found, fields)
    if diffs:
        raise CacheError(
            f"{what} was made with another backbone or view of the text ("
            + "; ".join(diffs)
            + "). Embeddings from different backbones cannot be mixed: rebuild with the same `micro embed` settings."
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
) -> Path:
    """Write a complete cache atomically (temporary file + rename).

    `sequences`, `prompts`, `context_prompts`, `context_sequences` map dataset names to arrays
    (embedding as [rows, d]; text as a list of str). `pairs` maps PAIR_FIELDS to int arrays; missing
    optional fields are filled with -1. `extra_groups` lets a producer (e.g. `micro simulate`) store
    its own arrays, which readers ignore.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n_pairs = len(np.asarray(pairs["chosen"]))
    hidden = int(np.asarray(sequences["embedding"]).shape[1])
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
    os.replace(tmp, path)
    return path


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
    if not path.exists():
        partial = [p for p in (path.with_name(path.name + ".parts"), path.with_name(path.name + ".tmp")) if p.exists()]
        hint = (
            f" An unfinished run left {partial[0]}: rerun the same `micro embed` command to finish it."
            if partial
            else " Build it with `micro embed` (or `micro simulate`)."
        )
        raise CacheError(f"cache {path} does not exist.{hint}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise CacheError(
            f"cache {path} is not a readable HDF5 file ({exc}). It may be truncated or corrupt: delete it and rerun `micro embed`."
        ) from None
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is an HDF5 file but not a micro embedding cache (no format={FORMAT!r} attribute).")
    if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
        raise CacheError(
            f"cache {path} has format version {attrs.get('format_version')}, newer than this micro reads ({FORMAT_VERSION}): upgrade micro."
        )
    if not bool(attrs.get("complete", False)):
        raise CacheError(
            f"cache {path} is unfinished (its writer stopped before the end). Rerun the same `micro embed` command to finish it."
        )
    for key in ("attributes", "splits"):
        attrs[key] = json.loads(attrs.get(key) or "[]")
    attrs["context_in_sequence"] = bool(attrs.get("context_in_sequence", False))
    attrs["hidden_size"] = int(attrs["hidden_size"])
    return attrs


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

    def __len__(self) -> int:
        return int(self.diff.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.diff.shape[1])

    @property
    def has_context(self) -> bool:
        return self.context_embedding is not None and bool((self.context_index >= 0).any())

    def prompt_inputs(self) -> torch.Tensor:
        """[n, d] router input of each pair's prompt (materialised; prefer the index form for big data)."""
        return self.prompt_embedding[self.prompt_index]

    def context_inputs(self) -> torch.Tensor:
        """[n, d] router input of each pair's (context + prompt); refuses pairs without context."""
        if self.context_embedding is None or bool((self.context_index < 0).any()):
            missing = int((self.context_index < 0).sum())
            raise CacheError(
                f"{missing} of {len(self)} pairs in split {self.split!r} have no context; "
                "context routing needs a context for every pair (give the data a `context` column)."
            )
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
        )


def _pair_difference(dataset: h5py.Dataset, chosen: np.ndarray, rejected: np.ndarray, block: int = 32768) -> np.ndarray:
    """emb[chosen] - emb[rejected] in float32, reading the float16 table once in row blocks.

    Peak memory is the [n, d] result plus one block, so a 700K-pair cache fits in RAM.
    """
    out = np.zeros((len(chosen), dataset.shape[1]), dtype=np.float32)
    if len(chosen) == 0:
        return out
    lo = int(min(chosen.min(), rejected.min()))
    hi = int(max(chosen.max(), rejected.max())) + 1
    for start in range(lo, hi, block):
        stop = min(start + block, hi)
        rows = dataset[start:stop]
        for index, sign in ((chosen, 1.0), (rejected, -1.0)):
            hit = np.flatnonzero((index >= start) & (index < stop))
            if len(hit):
                out[hit] += sign * rows[index[hit] - start].astype(np.float32)
    return out


def load_split(
    path: str | os.PathLike,
    split: str,
    *,
    context_in_sequence: bool = False,
    attributes: list[str] | None = None,
) -> CacheSplit:
    """Load one split into RAM as torch tensors.

    `context_in_sequence=True` takes the difference vectors from the (context + prompt, response)
    embeddings, as the paper's evaluation does; the cache must have been built with them.
    `attributes` keeps only pairs of those attributes.
    """
    meta = read_meta(path)
    if split not in meta["splits"]:
        raise CacheError(f"cache {path} has no split {split!r}; it has {meta['splits']}.")
    split_id = meta["splits"].index(split)
    with h5py.File(path, "r") as f:
        pairs = {name: f["pairs"][name][()] for name in PAIR_FIELDS}
        keep = pairs["split"] == split_id
        if attributes is not None:
            unknown = sorted(set(attributes) - set(meta["attributes"]))
            if unknown:
                raise CacheError(f"cache {path} has no attribute(s) {unknown}; it has {meta['attributes']}.")
            ids = [meta["attributes"].index(a) for a in attributes]
            keep &= np.isin(pairs["attribute"], ids)
        rows = np.flatnonzero(keep)
        sel = {name: arr[rows] for name, arr in pairs.items()}
        if context_in_sequence:
            if "context_sequences" not in f:
                raise CacheError(
                    f"cache {path} has no (context + prompt, response) embeddings; rebuild it with `micro embed --context-in-sequence`."
                )
            if (sel["chosen_context"] < 0).any():
                raise CacheError(f"some pairs in split {split!r} have no context, so no context-in-sequence embedding.")
            emb = f["context_sequences"]["embedding"]
            chosen, rejected = sel["chosen_context"], sel["rejected_context"]
        else:
            emb = f["sequences"]["embedding"]
            chosen, rejected = sel["chosen"], sel["rejected"]
        diff = _pair_difference(emb, chosen, rejected)
        prompt_embedding = f["prompts"]["embedding"][()].astype(np.float32)
        context_embedding = None
        if "context_prompts" in f and len(f["context_prompts"]["embedding"]):
            context_embedding = torch.from_numpy(f["context_prompts"]["embedding"][()].astype(np.float32))
    return CacheSplit(
        split=split,
        diff=torch.from_numpy(diff),
        prompt_index=torch.from_numpy(sel["prompt"]),
        prompt_embedding=torch.from_numpy(prompt_embedding),
        context_index=torch.from_numpy(sel["context_prompt"]),
        context_embedding=context_embedding,
        attribute=torch.from_numpy(sel["attribute"]),
        context_id=torch.from_numpy(sel["context"]),
        attributes=list(meta["attributes"]),
        meta=meta,
        pair_rows=rows,
    )


def load_texts(path: str | os.PathLike, split: str | None = None) -> "Any":
    """The pairs of a cache as a pandas table of texts (prompt, chosen, rejected, attribute, context, split)."""
    import pandas as pd

    meta = read_meta(path)
    with h5py.File(path, "r") as f:
        pairs = {name: f["pairs"][name][()] for name in PAIR_FIELDS}
        seq_text = f["sequences"]["text"].asstr()[()]
        prompt_text = f["prompts"]["text"].asstr()[()]
        contexts = f["contexts"]["text"].asstr()[()] if "contexts" in f else []
    ctx = pairs["context"]
    table = pd.DataFrame(
        {
            "prompt": prompt_text[pairs["prompt"]],
            "chosen": seq_text[pairs["chosen"]],
            "rejected": seq_text[pairs["rejected"]],
            "attribute": np.asarray(meta["attributes"], dtype=object)[pairs["attribute"]],
            "context": [contexts[c] if c >= 0 else None for c in ctx],
            "split": np.asarray(meta["splits"], dtype=object)[pairs["split"]],
        }
    )
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    return table
