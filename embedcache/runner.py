"""`embed_table`: run the plan through the backbone in token-budget batches, crash-safe and resumable.

While running, every finished batch is written atomically to `<out>.parts/batch_XXXXXX.npz` next to
`manifest.json` (the backbone identity and the plan's fingerprint), from a writer thread so the next
batch starts at once. A run killed at any moment loses at most the batches in flight: the same command
finds the parts, checks the manifest, and embeds only the missing batches. Batches are a pure function
of the plan, `batch_tokens` and `compile`, so a resumed run computes exactly what an uninterrupted one
would. At the end the parts are merged into the cache in bounded memory (parts.merge_parts) and the
parts folder is removed.

Under torchrun rank 0 builds the plan once and shares its job arrays through the parts folder (which
every rank must see: checked before any work); every rank embeds batches b with b % world_size == rank,
flags its shard done with a file and returns; rank 0 waits for the flags and merges. So the cache
equals a single-process run, and no rank waits on a collective while another embeds or merges.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from . import distributed as dist
from ..data import table_sha256
from .backbone import Backbone, load_backbone
from .config import EmbedConfig
from .parts import (
    SLOW_ENV,
    PartWriter,
    atomic_write_bytes,
    finished_batches,
    file_state,
    merge_parts,
    parts_dir,
    read_manifest,
    wait_for_ranks,
    write_done_flag,
)
from .batches import batch_shape, make_batches
from .plan import CTX_PROMPT, CTX_SEQ, PROMPT, SEQ, Jobs, Plan, build_plan
from ..outputs import check_file_target, lock, refuse_existing
from .store import IDENTITY_FIELDS, TABLE_FIELD, CacheError, cache_sizes, check_compatible, describe_difference, read_meta

__all__ = ["EmbedReport", "embed_table", "parts_dir"]

#: Fields of the manifest that must match for parts to be reused (beyond the backbone identity).
PLAN_FIELDS = ("context_in_sequence", "batch_tokens", "bucketed", "plan_sha256")


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
    merge_resumed_batches: int = 0  # batches an earlier, killed merge had already written into the cache
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


def _reuse_lookup(old: Path, plan: Plan) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Rows of an existing finished cache of the same backbone with this plan's texts: per group,
    (rows here, rows there). Only the texts are read; the merge copies the embeddings."""
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with h5py.File(old, "r") as f:
        prompt_text = list(f["prompts"]["text"].asstr()[()])
        contexts = list(f["contexts"]["text"].asstr()[()]) if "contexts" in f else []
        old_keys: dict[int, list] = {
            PROMPT: prompt_text,
            SEQ: [(prompt_text[p], t) for p, t in zip(f["sequences"]["prompt"][()], f["sequences"]["text"].asstr()[()])],
        }
        if "context_prompts" in f and len(f["context_prompts"]["prompt"]):
            g = f["context_prompts"]
            old_keys[CTX_PROMPT] = [(contexts[c], prompt_text[p]) for p, c in zip(g["prompt"][()], g["context"][()])]
            if "context_sequences" in f:
                context_seqs = f["context_sequences"]
                context_prompt_keys = old_keys[CTX_PROMPT]
                old_keys[CTX_SEQ] = [context_prompt_keys[q] + (t,) for q, t in
                                     zip(context_seqs["context_prompt"][()], context_seqs["text"].asstr()[()])]
    for group, keys in old_keys.items():
        index = {k: i for i, k in enumerate(keys)}
        hits = [(row, index[k]) for row, k in enumerate(plan.keys(group)) if k in index]
        if hits:
            rows = np.asarray(hits, dtype=np.int64)
            found[group] = (rows[:, 0], rows[:, 1])
    return found


def _jobs_needed(plan: Plan, reused: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    if not reused:
        return np.arange(plan.n_jobs)
    have = np.zeros(len(plan.out_row), dtype=bool)
    for group, (rows, _) in reused.items():
        in_group = np.zeros(plan.n_rows(group), dtype=bool)
        in_group[rows] = True
        sel = plan.out_group == group
        have[sel] = in_group[plan.out_row[sel]]
    return np.unique(plan.out_job[~have])


def embed_table(
    table,
    config: EmbedConfig | None = None,
    *,
    out: str | os.PathLike,
    model: str | Backbone | None = None,
    source_sha256: str | None = None,
    log: Callable[..., Any] = print,
    overwrite: bool = False,
    **settings: Any,
) -> EmbedReport:
    """Embed every distinct sequence of a preference table once and write the cache `out`.

    Settings come from `config` (EmbedConfig; its defaults when None), overridden by keyword `settings`
    named like its fields (`batch_tokens=512`, ...). `model` is a model name (overrides config.model) or
    a loaded Backbone, used as it is.

    Reruns: a finished cache made by the same command is left alone (report.noop); one made from another
    table or with other settings is refused (naming what differs) unless `overwrite`, which rebuilds it for
    this table, reusing the embeddings it already has when the backbone is the same (looked up by text),
    and replaces it atomically. One writer per cache: a second one is refused (OutputBusy names its pid).
    """
    config = (config or EmbedConfig()).replace(**settings)
    backbone = model if isinstance(model, Backbone) else None
    if isinstance(model, str):
        config = config.replace(model=model)
    out = check_file_target(out)
    ranks = dist.init()  # no-op without torchrun
    try:
        quiet = ranks.rank != 0
        with lock(out, "cache") if ranks.rank == 0 else contextlib.nullcontext():
            return _embed(table, config, backbone, out, source_sha256, (lambda *a, **k: None) if quiet else log, ranks,
                          overwrite=overwrite)
    finally:
        dist.finish(ranks)


def _embed(table, config: EmbedConfig, backbone: Backbone | None, out: Path, source_sha256: str | None, log, ranks, *,
           overwrite: bool = False) -> EmbedReport:
    t0 = time.perf_counter()
    if backbone is None:
        device, note = dist.rank_device(ranks, config.device)
        if note:
            log(note)
        backbone = load_backbone(config.model, device=device, dtype=config.dtype, max_length=config.max_length,
                                 trust_remote_code=config.trust_remote_code)
    identity = backbone.identity()
    batch_tokens = config.batch_tokens_for(backbone.device.type)
    report = EmbedReport(out=str(out), model_id=backbone.model_id, max_length=backbone.max_length, world_size=ranks.world_size)
    parts = parts_dir(out)

    # rank 0 decides (no-op, refusal, or the plan); the others learn the outcome, never wait on a timeout
    setup: _Setup | None = None
    if ranks.rank == 0:
        try:
            setup = _prepare(table, config, backbone, identity, batch_tokens, out, parts, source_sha256, ranks, overwrite)
            decision = {"noop": setup.noop, "token": setup.token, "n_batches": len(setup.batches or [])}
        except Exception as exc:  # the other ranks raise it too instead of waiting for a plan
            dist.broadcast_json(ranks, {"error": str(exc), "cache_error": isinstance(exc, CacheError)})
            raise
        decision = dist.broadcast_json(ranks, decision)
    else:
        decision = dist.broadcast_json(ranks, None)
        if "error" in decision:
            raise (CacheError if decision["cache_error"] else ValueError)(decision["error"])
    found = file_state(out)  # after the decision: what is at `out` now is what the commit may replace
    if decision["noop"]:
        report.noop = True
        if setup is not None:
            _fill_counts_from_cache(report, out)
            report.message = f"{out} is already complete for this table and model ({backbone.model_id}); nothing to do."
            log(report.message)
        return report

    n_batches = decision["n_batches"]
    done = finished_batches(parts, n_batches)  # listed before any rank starts: resumed parts only
    if ranks.distributed:
        seen = _sees_run(parts, decision["token"])
        if not dist.all_true(ranks, seen):
            raise CacheError(
                f"the parts folder {parts} is not shared by every rank ({'this rank sees it' if seen else 'rank %d does not see it' % ranks.rank}). "
                "Under torchrun --out must be on a filesystem that all nodes mount at the same path."
            )
    if setup is None:  # ranks 1..N: the job arrays rank 0 shared
        jobs = Jobs.load(parts / "jobs")
        batches = np.split(np.load(parts / "jobs" / "batch_jobs.npy"), np.load(parts / "jobs" / "batch_offsets.npy")[1:-1])
    else:
        jobs, batches = setup.plan.jobs, setup.batches
    mine = [b for b in range(n_batches) if b % ranks.world_size == ranks.rank and b not in done]
    report.resumed_batches = len(done)
    report.rank_batches = len(mine)
    report.batches = n_batches
    if done:
        log(f"resuming: {len(done)} of {n_batches} batches already in {parts}")
    stats = _run_batches(backbone, jobs, batches, mine, parts, batch_tokens if config.compile else None,
                         config.progress and ranks.rank == 0, config.compile)
    if stats["seconds"] > 0:
        report.sequences_per_s = round(stats["sequences"] * ranks.world_size / stats["seconds"], 1)
        report.tokens_per_s = round(stats["tokens"] * ranks.world_size / stats["seconds"], 1)
    if ranks.distributed:
        write_done_flag(parts, ranks.rank, decision["token"])
    if setup is None:
        report.message = f"rank {ranks.rank}: embedded {len(mine)} batches; rank 0 writes {out}"
        report.seconds = round(time.perf_counter() - t0, 2)
        return report

    if ranks.distributed:
        wait_for_ranks(parts, ranks.world_size, decision["token"], log)
    plan = setup.plan
    _fill_counts_from_plan(report, table, plan, setup.batches, setup.manifest)
    meta = {
        **{k: identity[k] for k in IDENTITY_FIELDS},
        "backbone_kind": identity["backbone_kind"],
        "compute_dtype": identity["compute_dtype"],
        "package_version": _package_version(),
        "source_sha256": setup.manifest["source_sha256"],
        "truncated_prompts": plan.stats["truncated_prompts"],
        "truncated_responses": plan.stats["truncated_responses"],
        "truncated_router_inputs": plan.stats["truncated_router_inputs"],
        "invalid_rows_skipped": plan.stats.get("invalid_rows", {}),
    }
    report.invalid_rows = dict(plan.stats.get("invalid_rows", {}))
    report.merge_resumed_batches = merge_parts(out, parts, n_batches, plan, meta, int(identity["hidden_size"]), setup.manifest["plan_sha256"],
                reused=setup.reused, old_cache=setup.reuse_from, found=found)
    shutil.rmtree(parts, ignore_errors=True)
    report.seconds = round(time.perf_counter() - t0, 2)
    report.message = f"wrote {out}"
    return report


@dataclass
class _Setup:
    """What rank 0 decided: a no-op, or the plan, its batches and the parts folder's manifest."""

    noop: bool
    token: str = ""
    plan: Plan | None = None
    batches: list = None
    manifest: dict = None
    reused: dict = None
    reuse_from: Path | None = None


def _prepare(table, config: EmbedConfig, backbone: Backbone, identity: dict, batch_tokens: int, out: Path, parts: Path,
             source_sha256: str | None, ranks, overwrite: bool = False) -> _Setup:
    source_sha256 = source_sha256 or table_sha256(table)
    reuse_from = None
    if out.exists():
        meta = _existing_meta(out, overwrite)  # refuses unfinished / foreign files unless they are to be replaced
        same_backbone = meta is not None and not describe_difference(identity, meta)
        if not overwrite:
            check_compatible(identity, meta, what=f"existing cache {out}",
                             fix="embed with its settings, choose another --out, or pass --overwrite to replace it")
        if same_backbone and meta.get(TABLE_FIELD) == source_sha256 and bool(meta["context_in_sequence"]) == config.context_in_sequence:
            return _Setup(noop=True)
        if not overwrite:
            refuse_existing(out, "a finished cache", _cache_differences(out, meta, table, source_sha256, config.context_in_sequence))
        reuse_from = out if same_backbone else None
    plan = build_plan(table, backbone, context_in_sequence=config.context_in_sequence)
    plan.stats["invalid_rows"] = dict(getattr(table, "attrs", {}).get("invalid_rows", {}))
    reused = _reuse_lookup(reuse_from, plan) if reuse_from is not None else {}
    batches = make_batches(plan.lengths, batch_tokens, _jobs_needed(plan, reused), bucketed=config.compile)
    manifest = {
        **identity,
        "context_in_sequence": config.context_in_sequence,
        "batch_tokens": batch_tokens,
        "bucketed": config.compile,
        "plan_sha256": plan.fingerprint(),
        "source_sha256": source_sha256,
        "n_batches": len(batches),
        "reused_rows": int(sum(len(rows) for rows, _ in reused.values())),
    }
    old = read_manifest(parts)
    if old is not None:
        check_compatible(identity, old, what=f"unfinished run in {parts}")
        diffs = describe_difference(manifest, old, PLAN_FIELDS + (TABLE_FIELD,))
        if diffs:
            raise CacheError(
                f"unfinished run in {parts} was started for another table or settings ({'; '.join(diffs)}). "
                f"Rerun the original command to finish it, or delete {parts} to start over."
            )
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(parts / "manifest.json", json.dumps(manifest, indent=1).encode())
    token = uuid.uuid4().hex
    if ranks.distributed:  # share the plan's job arrays, then the token that says they are this run's
        plan.jobs.save(parts / "jobs")
        flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        np.save(parts / "jobs" / "batch_jobs.npy", flat)
        np.save(parts / "jobs" / "batch_offsets.npy", np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(np.int64))
        atomic_write_bytes(parts / "run_token", token.encode())
    return _Setup(noop=False, token=token, plan=plan, batches=batches, manifest=manifest, reused=reused, reuse_from=reuse_from)


def _sees_run(parts: Path, token: str) -> bool:
    try:
        return (parts / "run_token").read_text() == token
    except OSError:
        return False


def _package_version() -> str:
    from .. import __version__

    return __version__


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


def _run_batches(backbone: Backbone, jobs: Jobs, batches, mine, parts: Path, bucket_tokens: int | None,
                 progress: bool, compile_model: bool) -> dict[str, float]:
    """Embed this rank's batches. The loop only prepares and launches: the device runs ahead, and the
    writer thread waits for each result, checks it and writes the part. `bucket_tokens` (compiled runs)
    pads every batch of a width bucket to one shape."""
    # outputs of each job, grouped once (no per-row Python work in the loop below beyond slicing)
    order = np.argsort(jobs.out_job, kind="stable")
    starts = np.searchsorted(jobs.out_job[order], np.arange(jobs.n_jobs + 1))
    lengths = jobs.lengths
    slow = float(os.environ.get(SLOW_ENV, "0") or 0)
    if mine:
        backbone.model  # load the weights before the clock and the progress bar start
        if compile_model:
            backbone.compile()
    total_seqs = sum(len(batches[b]) for b in mine)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_seqs, unit="seq", desc=f"embed {Path(backbone.model_id).name}", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    seen_seq = seen_tok = 0
    writer = PartWriter(parts)
    t0 = time.perf_counter()
    try:
        for b in mine:
            batch = batches[b]
            outs = np.concatenate([order[starts[j] : starts[j + 1]] for j in batch])
            owners = np.argsort(batch)[np.searchsorted(np.sort(batch), jobs.out_job[outs])]  # job's place in batch
            rows, width = batch_shape(lengths, batch, bucket_tokens) if bucket_tokens else (None, None)
            host = backbone.prepare([jobs.ids(j) for j in batch],
                                    None if jobs.type_ids is None else [jobs.types(j) for j in batch],
                                    jobs.out_pos[outs], owners, rows=rows, width=width)
            writer.put(b, backbone.run(host), jobs.out_group[outs], jobs.out_row[outs])
            seen_seq += len(batch)
            seen_tok += int(lengths[batch].sum())
            if bar is not None:
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.update(len(batch))
                bar.set_postfix_str(f"{seen_seq / dt:,.1f} seq/s, {seen_tok / dt:,.0f} tok/s", refresh=False)
            if slow:
                time.sleep(slow)
    finally:
        writer.close()
    if bar is not None:
        bar.close()
    return {"sequences": seen_seq, "tokens": seen_tok, "seconds": time.perf_counter() - t0}


def _fill_counts_from_plan(report: EmbedReport, table, plan: Plan, batches, manifest: dict) -> None:
    report.n_pairs = len(table)
    report.sequences, report.prompts = plan.n_rows(SEQ), plan.n_rows(PROMPT)
    report.context_prompts, report.context_sequences = plan.n_rows(CTX_PROMPT), plan.n_rows(CTX_SEQ)
    report.pair_references = plan.references()
    report.dedup_factor = round(report.pair_references / max(report.sequences, 1), 3)
    report.forward_sequences = int(sum(len(b) for b in batches))
    report.reused_from_cache = manifest["reused_rows"]
    all_jobs = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    report.tokens = int(plan.lengths[all_jobs].sum())
    report.padded_tokens = int(sum(len(b) * int(plan.lengths[b].max()) for b in batches))
    report.padding_fraction = round(1 - report.tokens / max(report.padded_tokens, 1), 4)
    report.truncated_prompts = plan.stats["truncated_prompts"]
    report.truncated_responses = plan.stats["truncated_responses"]
    report.truncated_router_inputs = plan.stats["truncated_router_inputs"]
