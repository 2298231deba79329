"""The parts folder of an unfinished `micro embed` run, and the streamed merge of its parts into the cache.

`<out>.parts/` holds `manifest.json` (what the run computes), one `batch_XXXXXX.npz` per finished batch
(group, row, float16 embedding; written to a temporary name and renamed, so a part is whole or absent),
and under torchrun the shared job arrays (`jobs/`), the run's token and one `done.rank<r>` flag per rank.

The merge streams: `merge.h5` is created with every table of the cache but empty embedding datasets of
the final shape, then filled a window of parts at a time (rows sorted, one write per group per window);
after each window the file is flushed and its `merged_batches` attribute advanced. Memory stays at one
window whatever the cache size. A merge killed midway resumes from its last flushed window (or starts
the file over when the kill left it unreadable: the parts stay until the cache is in place). Last, the
file is marked complete and renamed to `<out>`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from .plan import CTX_PROMPT, CTX_SEQ, GROUPS, PROMPT, SEQ, Plan
from .store import CacheError, write_cache

STAGING = "merge.h5"
#: Seconds to sleep after each embedded batch and each merge window; tests use it to kill a run midway.
SLOW_ENV = "MICRO_EMBED_SLOW_TEST"
#: Parts read into memory per merge window (the merge's peak beyond the plan itself).
MERGE_WINDOW_BYTES = 64 << 20
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def part_path(parts: Path, batch: int) -> Path:
    return parts / f"batch_{batch:06d}.npz"


def finished_batches(parts: Path, n_batches: int) -> set[int]:
    return {b for b in range(n_batches) if part_path(parts, b).exists()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")  # never matches batch_*.npz
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_part(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_part(path: Path, keys: tuple[str, ...] = ("group", "row", "embedding")) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except Exception:  # a torn file cannot exist (rename is atomic), but never trust a part blindly
        return None


def checked_float16(embedding: np.ndarray, what: str) -> np.ndarray:
    """float32 embeddings as float16, refusing non-finite values and values float16 cannot hold."""
    bad = ~np.isfinite(embedding).all(axis=1)
    if bad.any():
        raise CacheError(
            f"the backbone gave non-finite embeddings for {int(bad.sum())} of {len(bad)} outputs of {what}. "
            "This is usually an overflow in reduced precision: rerun with --dtype bf16 (or fp32)."
        )
    peak = float(np.abs(embedding).max()) if embedding.size else 0.0
    if peak > _FLOAT16_MAX:
        raise CacheError(
            f"embeddings of {what} reach {peak:.3g}, beyond float16's {_FLOAT16_MAX:.0f}: the cache stores float16, "
            "so this backbone's hidden states cannot be cached as they are."
        )
    return embedding.astype(np.float16)


class PartWriter:
    """Writes finished batches from a background thread, so the next forward starts at once.

    `put` takes the device tensor of a batch: on a GPU it starts a copy into pinned host memory and
    records an event; the thread waits for that event, checks the values (`checked_float16`) and writes
    the part atomically. The queue is short, so a slow disk slows the loop instead of filling memory.
    The first error stops the writing and is raised by the next `put` or by `close`.
    """

    def __init__(self, parts: Path, depth: int = 4):
        self.parts = parts
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="micro-part-writer", daemon=True)
        self.thread.start()

    def put(self, batch: int, embedding: torch.Tensor, group: np.ndarray, row: np.ndarray) -> None:
        self._raise()
        event = None
        if embedding.device.type == "cuda":
            host = torch.empty(embedding.shape, dtype=embedding.dtype, pin_memory=True)
            host.copy_(embedding, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            embedding = host
        self.queue.put((batch, embedding, event, group, row))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so `put` never blocks after a failure
            batch, embedding, event, group, row = item
            try:
                if event is not None:
                    event.synchronize()
                emb = checked_float16(embedding.numpy(), f"batch {batch}")
                save_part(part_path(self.parts, batch), group=group.astype(np.int8), row=row, embedding=emb)
            except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
                self.error = exc


# ---- waiting for the other ranks (files, not collectives: no timeout to outlast) ----------------------
def write_done_flag(parts: Path, rank: int, token: str) -> None:
    atomic_write_bytes(parts / f"done.rank{rank}", token.encode())


def wait_for_ranks(parts: Path, world_size: int, token: str, log: Callable[[str], None], poll_s: float = 0.5) -> None:
    """Block until every rank wrote its done flag for this run (`token`)."""
    last_note = time.monotonic()
    while True:
        missing = []
        for rank in range(world_size):
            flag = parts / f"done.rank{rank}"
            try:
                if flag.read_text() != token:
                    missing.append(rank)
            except OSError:
                missing.append(rank)
        if not missing:
            return
        if time.monotonic() - last_note > 300:
            log(f"waiting for rank(s) {missing} to finish their batches")
            last_note = time.monotonic()
        time.sleep(poll_s)


# ---- the streamed merge -------------------------------------------------------------------------------
def cache_tables(plan: Plan, embeddings: dict[int, np.ndarray]) -> dict[str, Any]:
    """`write_cache` keyword arguments for a plan's tables, with the given embedding array per group."""
    has_context = plan.n_rows(CTX_PROMPT) > 0
    return dict(
        sequences={"embedding": embeddings[SEQ], "prompt": plan.seq_prompt, "text": plan.seq_text},
        prompts={"embedding": embeddings[PROMPT], "text": plan.prompt_text},
        pairs=plan.pairs,
        attributes=plan.attributes,
        splits=plan.splits,
        contexts=plan.contexts,
        context_prompts={"embedding": embeddings[CTX_PROMPT], "prompt": plan.context_prompt_prompt,
                         "context": plan.context_prompt_context} if has_context else None,
        context_sequences={"embedding": embeddings[CTX_SEQ], "context_prompt": plan.context_seq_context_prompt,
                           "text": plan.context_seq_text} if plan.context_in_sequence else None,
    )


def _groups_in_cache(plan: Plan) -> list[int]:
    return [SEQ, PROMPT] + ([CTX_PROMPT] if plan.n_rows(CTX_PROMPT) > 0 else []) + ([CTX_SEQ] if plan.context_in_sequence else [])


def _open_staging(path: Path, plan: Plan, meta: dict, hidden: int, key: str) -> tuple[h5py.File, int]:
    """The staging file and how many batches it already holds (0 when new or unusable)."""
    if path.exists():
        try:
            f = h5py.File(path, "r+")
            if f.attrs.get("merge_key") == key:
                return f, int(f.attrs["merged_batches"])
            f.close()
        except (OSError, KeyError, ValueError):
            pass  # killed mid-write: start this file over (the parts are all still there)
        path.unlink()
    empty = {g: np.zeros((0, hidden), dtype=np.float16) for g in range(4)}
    write_cache(path, meta=meta, **cache_tables(plan, empty))
    f = h5py.File(path, "r+")
    f.attrs["complete"] = False
    for g in _groups_in_cache(plan):
        group = f[GROUPS[g]]
        del group["embedding"]
        group.create_dataset("embedding", shape=(plan.n_rows(g), hidden), dtype=np.float16)
    f.attrs["merge_key"] = key
    f.attrs["merged_batches"] = 0
    f.flush()
    return f, 0


def _write_rows(dataset: h5py.Dataset, rows: np.ndarray, values: np.ndarray) -> None:
    """dataset[rows] = values for unsorted rows, as one sorted write."""
    if len(rows):
        order = np.argsort(rows, kind="stable")
        dataset[rows[order]] = values[order]


def merge_parts(
    out: Path,
    parts: Path,
    n_batches: int,
    plan: Plan,
    meta: dict,
    hidden: int,
    key: str,
    *,
    reused: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    old_cache: Path | None = None,
    window_bytes: int = MERGE_WINDOW_BYTES,
    found: tuple | None = None,
) -> int:
    """Write the cache `out` from the parts (and rows reused from `old_cache`) in bounded memory.

    `reused[group] = (new rows, old rows)`: embeddings copied from the old cache. `key` names this run's
    plan: a staging file left by another plan is started over. Returns how many batches an earlier,
    killed merge had already written (0 for a fresh merge). `found`: `file_state(out)` when the run began;
    an `out` written by someone else since is refused at the commit, and the parts stay for a rerun.
    """
    slow = float(os.environ.get(SLOW_ENV, "0") or 0)
    staging = parts / STAGING
    f, merged = _open_staging(staging, plan, meta, hidden, key)
    try:
        filled = {g: np.zeros(plan.n_rows(g), dtype=bool) for g in _groups_in_cache(plan)}
        if reused and old_cache is not None:
            with h5py.File(old_cache, "r") as old:
                for g, (new_rows, old_rows) in reused.items():
                    filled[g][new_rows] = True
                    if merged == 0:  # copied once, before the first window
                        _copy_reused(old[GROUPS[g]]["embedding"], f[GROUPS[g]]["embedding"], new_rows, old_rows, window_bytes)
        for b in range(merged):  # rows of the windows merged before a kill
            part = load_part(part_path(parts, b), keys=("group", "row"))
            if part is None:
                raise CacheError(f"batch {b} is missing from {parts}; rerun the same command to finish it.")
            for g in filled:
                filled[g][part["row"][part["group"] == g]] = True
        b = merged
        while b < n_batches:
            window: list[dict[str, np.ndarray]] = []
            size = 0
            while b < n_batches and size < window_bytes:
                part = load_part(part_path(parts, b))
                if part is None:
                    raise CacheError(f"batch {b} is missing from {parts}; rerun the same command to finish it.")
                window.append(part)
                size += part["embedding"].nbytes
                b += 1
            group = np.concatenate([p["group"] for p in window])
            rows = np.concatenate([p["row"] for p in window])
            emb = np.concatenate([p["embedding"] for p in window])
            del window
            for g in filled:
                sel = group == g
                _write_rows(f[GROUPS[g]]["embedding"], rows[sel], emb[sel])
                filled[g][rows[sel]] = True
            f.flush()  # the data of this window is in the file before the counter says so
            f.attrs["merged_batches"] = b
            f.flush()
            if slow:
                time.sleep(slow)
        for g, ok in filled.items():
            if not ok.all():
                raise CacheError(f"{int((~ok).sum())} {GROUPS[g]} rows were never embedded (internal error)")
        del f.attrs["merge_key"], f.attrs["merged_batches"]
        f.attrs["complete"] = True
    finally:
        f.close()
    commit(staging, out, found, parts)
    return merged


def commit(staging: Path, out: Path, found: tuple | None, parts: Path) -> None:
    """Rename the finished cache into place, unless something else wrote `out` since `found` was taken."""
    if file_state(out) != found:
        raise CacheError(f"{out} was written by something else while this cache was built; nothing was replaced "
                         f"(the embeddings are kept in {parts}): move that file away and rerun the same command.")
    os.replace(staging, out)


def file_state(path: Path) -> tuple | None:
    """(inode, size, mtime) of a file, None when it does not exist: what tells a file written meanwhile."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _copy_reused(src: h5py.Dataset, dst: h5py.Dataset, new_rows: np.ndarray, old_rows: np.ndarray, window_bytes: int) -> None:
    per = max(1, window_bytes // max(src.shape[1] * src.dtype.itemsize, 1))
    order = np.argsort(old_rows, kind="stable")
    new_rows, old_rows = new_rows[order], old_rows[order]
    for start in range(0, len(old_rows), per):
        o, n = old_rows[start : start + per], new_rows[start : start + per]
        _write_rows(dst, n, src[o])  # old rows sorted and distinct: one read


def read_manifest(parts: Path) -> dict | None:
    mfile = parts / "manifest.json"
    return json.loads(mfile.read_text()) if mfile.exists() else None
