"""`embed_table`: run the plan through the backbone in token-budget batches, crash-safe and resumable.

While running, every finished batch is written atomically to `<out>.parts/batch_XXXXXX.npz` (temporary
file + rename) next to `manifest.json` (the backbone identity and the plan's fingerprint). A run killed
at any moment loses at most the batch in flight: the same command finds the parts, checks the manifest,
and embeds only the missing batches. Batches are a pure function of the plan and `batch_tokens`, so a
resumed run computes exactly what an uninterrupted one would. At the end the parts are assembled into
one cache with `store.write_cache` (atomic) and the parts folder is removed.

Under torchrun every rank builds the same plan and embeds batches b with b % world_size == rank into the
same parts folder; rank 0 assembles after a barrier, so the cache equals a single-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import distributed as dist
from .backbone import DEFAULT_MODEL, Backbone, load_backbone
from .encode import forward_jobs, outputs_by_job
from ..data import table_sha256
from .plan import CTX_PROMPT, CTX_SEQ, GROUPS, PROMPT, SEQ, Plan, build_plan, make_batches
from ..outputs import check_file_target, lock, refuse_existing
from .store import (IDENTITY_FIELDS, TABLE_FIELD, CacheError, cache_sizes, check_compatible, describe_difference, read_meta,
                    write_cache)

#: Seconds to sleep after each batch; tests use it to kill a run midway.
SLOW_ENV = "MICRO_EMBED_SLOW_TEST"
#: Fields of the manifest that must match for parts to be reused (beyond the backbone identity).
PLAN_FIELDS = ("compute_dtype", "context_in_sequence", "batch_tokens", "plan_sha256")


@dataclass
class EmbedReport:
    """What a `micro embed` run did; `noop` when the cache was already complete for this command."""

    out: str
    noop: bool = False
    model_id: str = ""
    n_pairs: int = 0
    sequences: int = 0
    prompts: int = 0
    context_prompts: int = 0
    context_sequences: int = 0
    pair_references: int = 0
    dedup_factor: float = 1.0
    forward_sequences: int = 0
    reused_from_cache: int = 0
    batches: int = 0
    resumed_batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    padding_fraction: float = 0.0
    truncated_prompts: int = 0
    truncated_responses: int = 0
    truncated_router_inputs: int = 0
    max_length: int = 0
    seconds: float = 0.0
    sequences_per_s: float = 0.0
    tokens_per_s: float = 0.0
    world_size: int = 1
    rank_batches: int = 0  # batches this process embedded (its shard under torchrun)
    invalid_rows: dict = field(default_factory=dict)  # rows dropped by --skip-invalid, per reason
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_batch_tokens(device: torch.device) -> int:
    # CPU: small batches pad less and keep the [tokens, 1536] FFN activations in cache; 2048 measured
    # fastest for MiniLM on the 2-core box (1024 / 4096 / 8192 slower, benchmarks/README.md)
    return 32768 if device.type == "cuda" else 2048


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_part(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")  # never matches batch_*.npz
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_part(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # a torn file cannot exist (rename is atomic), but never trust a part blindly
        return None


def _reuse_lookup(old: Path, plan: Plan, identity: dict) -> dict[int, dict[int, np.ndarray]]:
    """Embeddings of an existing finished cache of the same backbone, found by text, per group and row."""

    found: dict[int, dict[int, np.ndarray]] = {}
    with h5py.File(old, "r") as f:
        ptext = list(f["prompts"]["text"].asstr()[()])
        contexts = list(f["contexts"]["text"].asstr()[()]) if "contexts" in f else []
        old_keys: dict[int, list] = {
            PROMPT: ptext,
            SEQ: [(ptext[p], t) for p, t in zip(f["sequences"]["prompt"][()], f["sequences"]["text"].asstr()[()])],
        }
        if "context_prompts" in f and len(f["context_prompts"]["prompt"]):
            g = f["context_prompts"]
            old_keys[CTX_PROMPT] = [(contexts[c], ptext[p]) for p, c in zip(g["prompt"][()], g["context"][()])]
            if "context_sequences" in f:
                g2 = f["context_sequences"]
                cp = old_keys[CTX_PROMPT]
                old_keys[CTX_SEQ] = [cp[q] + (t,) for q, t in zip(g2["context_prompt"][()], g2["text"].asstr()[()])]
        for group, keys in old_keys.items():
            index = {k: i for i, k in enumerate(keys)}
            hits = [(row, index[k]) for row, k in enumerate(plan.keys(group)) if k in index]
            if hits:
                emb = f[GROUPS[group]]["embedding"][()]
                found[group] = {row: emb[i] for row, i in hits}
    return found


def embed_table(
    table,
    *,
    model: str | Backbone = DEFAULT_MODEL,
    out: str | os.PathLike,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    context_in_sequence: bool = False,
    trust_remote_code: bool = False,
    source_sha256: str | None = None,
    progress: bool = True,
    log=print,
    overwrite: bool = False,
) -> EmbedReport:
    """Embed every distinct sequence of a preference table once and write the cache `out`.

    Reruns: a finished cache made by the same command is left alone (report.noop); one made from another
    table or with other settings is refused (naming what differs) unless `overwrite`, which rebuilds it for
    this table, reusing the embeddings it already has when the backbone is the same (looked up by text),
    and replaces it atomically. One writer per cache: a second one is refused (OutputBusy names its pid).
    """
    out = check_file_target(out)
    ctx = dist.init()  # no-op without torchrun
    try:
        with lock(out, "cache") if ctx.rank == 0 else contextlib.nullcontext():
            return _embed(table, model, out, max_length, batch_tokens, dtype, device, context_in_sequence,
                          trust_remote_code, source_sha256, progress, log if ctx.rank == 0 else (lambda *a, **k: None), ctx,
                          overwrite=overwrite)
    finally:
        dist.finish(ctx)


def _embed(table, model, out, max_length, batch_tokens, dtype, device, context_in_sequence, trust_remote_code,
           source_sha256, progress, log, ctx, *, overwrite: bool = False) -> EmbedReport:
    t0 = time.perf_counter()
    if isinstance(model, Backbone):
        bb = model
    else:
        if ctx.world_size > 1 and ctx.device and device in (None, "cuda"):
            device = ctx.device  # under torchrun each rank takes its local GPU
        bb = load_backbone(model, device=device or ctx.device, dtype=dtype, max_length=max_length,
                           trust_remote_code=trust_remote_code)
    identity = bb.identity()
    source_sha256 = source_sha256 or table_sha256(table)
    batch_tokens = int(batch_tokens or default_batch_tokens(bb.device))
    report = EmbedReport(out=str(out), model_id=bb.model_id, max_length=bb.max_length, world_size=ctx.world_size)

    reuse_from = None
    if out.exists():
        meta = _existing_meta(out, overwrite)  # refuses unfinished / foreign files unless they are to be replaced
        same_backbone = meta is not None and not describe_difference(identity, meta)
        if not overwrite:
            check_compatible(identity, meta, what=f"existing cache {out}",
                             fix="embed with its settings, choose another --out, or pass --overwrite to replace it")
        if same_backbone and meta.get(TABLE_FIELD) == source_sha256 and bool(meta["context_in_sequence"]) == context_in_sequence:
            report.noop = True
            _fill_counts_from_cache(report, out)
            report.message = f"{out} is already complete for this table and model ({bb.model_id}); nothing to do."
            log(report.message)
            return report
        if not overwrite:
            refuse_existing(out, "a finished cache", _cache_differences(out, meta, table, source_sha256, context_in_sequence))
        reuse_from = out if same_backbone else None

    plan = build_plan(table, bb, context_in_sequence=context_in_sequence)
    plan.stats["invalid_rows"] = report.invalid_rows = dict(getattr(table, "attrs", {}).get("invalid_rows", {}))
    reused = _reuse_lookup(reuse_from, plan, identity) if reuse_from is not None else {}
    todo_jobs = _jobs_needed(plan, reused)
    batches = make_batches(plan.lengths, batch_tokens, todo_jobs)
    manifest = {
        **identity,
        "context_in_sequence": context_in_sequence,
        "batch_tokens": batch_tokens,
        "plan_sha256": plan.fingerprint(),
        "source_sha256": source_sha256,
        "n_batches": len(batches),
        "reused_rows": int(sum(len(v) for v in reused.values())),
    }
    parts = parts_dir(out)
    mfile = parts / "manifest.json"
    if mfile.exists():  # every rank checks, so a refusal never leaves another rank waiting at a barrier
            old = json.loads(mfile.read_text())
            check_compatible(identity, old, what=f"unfinished run in {parts}")
            diffs = describe_difference(manifest, old, PLAN_FIELDS + (TABLE_FIELD,))
            if diffs:
                raise CacheError(
                    f"unfinished run in {parts} was started for another table or settings ({'; '.join(diffs)}). "
                    f"Rerun the original command to finish it, or delete {parts} to start over."
                )
    elif ctx.rank == 0:
        parts.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(mfile, json.dumps(manifest, indent=1).encode())
    dist.barrier(ctx)

    done = {b for b in range(len(batches)) if (parts / f"batch_{b:06d}.npz").exists()}
    mine = [b for b in range(len(batches)) if b % ctx.world_size == ctx.rank and b not in done]
    report.resumed_batches = len(done)
    report.rank_batches = len(mine)
    if done:
        log(f"resuming: {len(done)} of {len(batches)} batches already in {parts}")
    stats = _run_batches(bb, plan, batches, mine, parts, progress and ctx.rank == 0, ctx)
    dist.barrier(ctx)

    report.n_pairs = len(table)
    report.sequences, report.prompts = plan.n_rows(SEQ), plan.n_rows(PROMPT)
    report.context_prompts, report.context_sequences = plan.n_rows(CTX_PROMPT), plan.n_rows(CTX_SEQ)
    report.pair_references = plan.references()
    report.dedup_factor = round(report.pair_references / max(report.sequences, 1), 3)
    report.forward_sequences = int(sum(len(b) for b in batches))
    report.reused_from_cache = manifest["reused_rows"]
    report.batches = len(batches)
    all_jobs = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    report.tokens = int(plan.lengths[all_jobs].sum())
    report.padded_tokens = int(sum(len(b) * int(plan.lengths[b].max()) for b in batches))
    report.padding_fraction = round(1 - report.tokens / max(report.padded_tokens, 1), 4)
    report.truncated_prompts = plan.stats["truncated_prompts"]
    report.truncated_responses = plan.stats["truncated_responses"]
    report.truncated_router_inputs = plan.stats["truncated_router_inputs"]

    if ctx.rank == 0:
        _assemble(out, plan, batches, parts, reused, identity, source_sha256, bb)
        shutil.rmtree(parts, ignore_errors=True)
    dist.barrier(ctx)
    report.seconds = round(time.perf_counter() - t0, 2)
    if stats["seconds"] > 0:
        report.sequences_per_s = round(stats["sequences"] * ctx.world_size / stats["seconds"], 1)
        report.tokens_per_s = round(stats["tokens"] * ctx.world_size / stats["seconds"], 1)
    report.message = f"wrote {out}"
    return report


def _existing_meta(out: Path, overwrite: bool) -> dict | None:
    """The metadata of the cache at `out`; None for an unusable file that --overwrite will replace."""
    try:
        return read_meta(out)
    except CacheError:
        if overwrite:
            return None
        raise


def _cache_differences(out: Path, meta: dict, table, source_sha256: str, context_in_sequence: bool) -> list[str]:
    """What separates the finished cache at `out` from the one this command would write."""
    diffs = []
    if meta.get(TABLE_FIELD) != source_sha256:
        n_old = cache_sizes(out)["pairs"]
        diffs.append(f"built from another table (sha256 {str(meta.get(TABLE_FIELD))[:12]}, {n_old} pairs; "
                     f"this one: sha256 {source_sha256[:12]}, {len(table)} pairs)")
    if bool(meta["context_in_sequence"]) != context_in_sequence:
        diffs.append(f"context_in_sequence: {bool(meta['context_in_sequence'])} -> {context_in_sequence}")
    return diffs


def _fill_counts_from_cache(report: EmbedReport, out: Path) -> None:
    """What a finished cache holds, so a no-op run reports the same counts as the run that built it."""
    sizes = cache_sizes(out)
    report.n_pairs, report.sequences, report.prompts = sizes["pairs"], sizes["sequences"], sizes["prompts"]
    report.context_prompts, report.context_sequences = sizes["context_prompts"], sizes["context_sequences"]
    report.pair_references = 2 * report.n_pairs
    report.dedup_factor = report.pair_references / max(1, report.sequences)


def _jobs_needed(plan: Plan, reused: dict[int, dict[int, np.ndarray]]) -> np.ndarray:
    if not reused:
        return np.arange(plan.n_jobs)
    have = np.array([int(r) in reused.get(int(g), {}) for g, r in zip(plan.out_group, plan.out_row)], dtype=bool)
    missing_jobs = np.unique(plan.out_job[~have])
    return missing_jobs


def _run_batches(bb: Backbone, plan: Plan, batches, mine, parts: Path, progress: bool, ctx) -> dict[str, float]:
    order, starts = outputs_by_job(plan)  # grouped once: no per-row Python work in the loop below
    slow = float(os.environ.get(SLOW_ENV, "0") or 0)
    if mine:
        bb.model  # load the weights before the clock and the progress bar start
    total_seqs = sum(len(batches[b]) for b in mine)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_seqs, unit="seq", desc=f"embed {Path(bb.model_id).name}", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    seen_seq = seen_tok = 0
    t0 = time.perf_counter()
    for b in mine:
        jobs = batches[b]
        outs, emb = forward_jobs(bb, plan, jobs, order, starts)
        _save_part(parts / f"batch_{b:06d}.npz", group=plan.out_group[outs].astype(np.int8),
                   row=plan.out_row[outs], embedding=emb.astype(np.float16))
        seen_seq += len(jobs)
        seen_tok += int(plan.lengths[jobs].sum())
        if bar is not None:
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(len(jobs))
            bar.set_postfix_str(f"{seen_seq / dt:,.1f} seq/s, {seen_tok / dt:,.0f} tok/s", refresh=False)
        if slow:
            time.sleep(slow)
    if bar is not None:
        bar.close()
    return {"sequences": seen_seq, "tokens": seen_tok, "seconds": time.perf_counter() - t0}


def _assemble(out: Path, plan: Plan, batches, parts: Path, reused, identity: dict, source_sha256: str, bb: Backbone) -> None:
    from .. import __version__

    d = int(identity["hidden_size"])
    emb = [np.zeros((plan.n_rows(g), d), dtype=np.float16) for g in range(4)]
    filled = [np.zeros(plan.n_rows(g), dtype=bool) for g in range(4)]
    for g, rows in reused.items():
        if rows:
            idx = np.fromiter(rows.keys(), dtype=np.int64)
            emb[g][idx] = np.stack(list(rows.values()))
            filled[g][idx] = True
    for b in range(len(batches)):
        part = _load_part(parts / f"batch_{b:06d}.npz")
        if part is None:
            raise CacheError(f"batch {b} is missing from {parts}; rerun the same command to finish it.")
        for g in range(4):
            sel = part["group"] == g
            if sel.any():
                emb[g][part["row"][sel]] = part["embedding"][sel]
                filled[g][part["row"][sel]] = True
    for g in range(4):
        if not filled[g].all():
            raise CacheError(f"{int((~filled[g]).sum())} {GROUPS[g]} rows were never embedded (internal error)")
    meta = {
        **{k: identity[k] for k in IDENTITY_FIELDS},
        "backbone_kind": identity["backbone_kind"],
        "compute_dtype": identity["compute_dtype"],
        "package_version": __version__,
        "source_sha256": source_sha256,
        "truncated_prompts": plan.stats["truncated_prompts"],
        "truncated_responses": plan.stats["truncated_responses"],
        "truncated_router_inputs": plan.stats["truncated_router_inputs"],
        "invalid_rows_skipped": plan.stats.get("invalid_rows", {}),
    }
    has_ctx = plan.n_rows(CTX_PROMPT) > 0
    write_cache(
        out,
        meta=meta,
        sequences={"embedding": emb[SEQ], "prompt": plan.seq_prompt, "text": plan.seq_text},
        prompts={"embedding": emb[PROMPT], "text": plan.prompt_text},
        pairs=plan.pairs,
        attributes=plan.attributes,
        splits=plan.splits,
        contexts=plan.contexts,
        context_prompts={"embedding": emb[CTX_PROMPT], "prompt": plan.cp_prompt, "context": plan.cp_context} if has_ctx else None,
        context_sequences={"embedding": emb[CTX_SEQ], "context_prompt": plan.cs_cp, "text": plan.cs_text} if plan.context_in_sequence else None,
    )
