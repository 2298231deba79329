"""`micro embed`."""

from __future__ import annotations

import typer

from ._app import app, fail
from ._common import AttributeKey, ChosenKey, ContextKey, LimitOpt, PathOpt, PromptKey, RejectedKey, SourceArg, SplitKey, SplitOpt, _load_source

# ---- embed commands ----
def _help(name: str) -> str:
    from ..embedcache.config import EmbedConfig

    return EmbedConfig.help(name)


def _default(name: str):
    from ..embedcache.config import EmbedConfig

    return getattr(EmbedConfig(), name)


@app.command("embed")
def embed(
    source: SourceArg,
    out: str = typer.Option(..., "--out", help="The HDF5 cache to write (e.g. cache.h5)."),
    model: str = typer.Option(_default("model"), "--model", help=_help("model")),
    max_length: int = typer.Option(_default("max_length"), "--max-length", help=_help("max_length")),
    batch_tokens: int = typer.Option(_default("batch_tokens"), "--batch-tokens", help=_help("batch_tokens")),
    dtype: str = typer.Option(_default("dtype"), "--dtype", help=_help("dtype")),
    device: str = typer.Option(_default("device"), "--device", help=_help("device")),
    context_in_sequence: bool = typer.Option(_default("context_in_sequence"), "--context-in-sequence", help=_help("context_in_sequence")),
    trust_remote_code: bool = typer.Option(_default("trust_remote_code"), "--trust-remote-code", help=_help("trust_remote_code")),
    compile_model: bool = typer.Option(_default("compile"), "--compile", help=_help("compile")),
    path: PathOpt = None,
    split: SplitOpt = None,
    prompt_key: PromptKey = "prompt",
    chosen_key: ChosenKey = "chosen",
    rejected_key: RejectedKey = "rejected",
    attribute_key: AttributeKey = "attribute",
    context_key: ContextKey = "context",
    split_key: SplitKey = "split",
    limit: LimitOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Embed every distinct (prompt, response), prompt and (context + prompt) of SOURCE once into an HDF5 cache.

    Crash-safe and resumable: rerun the same command after a crash to finish; a finished cache is
    left alone. Several GPUs: `torchrun --nproc_per_node=N -m micro.cli embed ...` (same flags).
    Defaults live in micro.embedcache.EmbedConfig; flags given here override them.
    """
    import json
    import os

    from ..data import PreferenceDataError, table_sha256
    from ..embedcache import CacheError, EmbedConfig, embed_table

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        config = EmbedConfig(model=model, max_length=max_length, batch_tokens=batch_tokens, dtype=dtype, device=device,
                             context_in_sequence=context_in_sequence, trust_remote_code=trust_remote_code,
                             compile=compile_model)
        df = _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit)
        report = embed_table(df, config, out=out, source_sha256=table_sha256(df), log=lambda msg: typer.echo(msg, err=True))
    except (PreferenceDataError, CacheError, ValueError, OSError) as exc:
        fail(exc)
    if not rank0:
        return
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    elif not report.noop:
        _print_embed_report(report)


def _print_embed_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.out}: {report.n_pairs} pairs embedded with {report.model_id}", show_header=False)
    rows = [
        ("distinct sequences", f"{report.sequences:,} (from {report.pair_references:,} pair references, dedup x{report.dedup_factor})"),
        ("distinct prompts", f"{report.prompts:,}"),
        ("context prompts / context sequences", f"{report.context_prompts:,} / {report.context_sequences:,}"),
        ("forward passes", f"{report.forward_sequences:,} in {report.batches:,} batches"
         + (f" ({report.resumed_batches} resumed)" if report.resumed_batches else "")
         + (f", {report.reused_from_cache:,} rows reused from the old cache" if report.reused_from_cache else "")),
        ("tokens", f"{report.tokens:,} real, padding {100 * report.padding_fraction:.1f} %"),
        ("truncated (max length %d)" % report.max_length,
         f"{report.truncated_prompts} prompts, {report.truncated_responses} responses, {report.truncated_router_inputs} router inputs"),
        ("speed", f"{report.sequences_per_s:,.1f} seq/s, {report.tokens_per_s:,.0f} tok/s"
         + (f" over {report.world_size} ranks" if report.world_size > 1 else "")),
        ("wall time", f"{report.seconds:.1f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=False).print(table)
# ---- end embed commands ----

