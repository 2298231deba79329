"""`micro embed`."""

from __future__ import annotations

import typer

from ..embedcache.config import EmbedConfig
from ._app import app, fail
from ._common import (AttributeKey, ChosenKey, ContextKey, DatasetConfigOpt, LimitOpt, OverwriteOpt, PathOpt, PromptKey,
                      RejectedKey, RevisionOpt, SkipInvalidOpt, SourceArg, SplitKey, SplitOpt, _load_source)
from ._options import config_options

# ---- embed commands ----
@app.command("embed")
@config_options(EmbedConfig, exclude=("progress",))
def embed(
    source: SourceArg,
    out: str = typer.Option(..., "--out", help="The HDF5 cache to write (e.g. cache.h5)."),
    path: PathOpt = None,
    split: SplitOpt = None,
    dataset_config: DatasetConfigOpt = None,
    revision: RevisionOpt = None,
    prompt_key: PromptKey = "prompt",
    chosen_key: ChosenKey = "chosen",
    rejected_key: RejectedKey = "rejected",
    attribute_key: AttributeKey = "attribute",
    context_key: ContextKey = "context",
    split_key: SplitKey = "split",
    limit: LimitOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    overrides: dict = None,
) -> None:
    """Embed every distinct (prompt, response), prompt and (context + prompt) of SOURCE once into an HDF5 cache.

    Crash-safe and resumable: rerun the same command after a crash to finish; a finished cache is
    left alone. Several GPUs: `torchrun --nproc_per_node=N -m micro.cli embed ...` (same flags).
    Every option from --config on is a field of micro.embedcache.EmbedConfig (its one default is shown).
    """
    import json
    import os

    from ..data import PreferenceDataError, table_sha256
    from ..embedcache import CacheError, embed_table
    from ..outputs import error_line

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        config = EmbedConfig(**overrides)
        df = _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit,
                          dataset_config=dataset_config, revision=revision, skip_invalid=skip_invalid)
        for warning in df.attrs.get("warnings", []) if skip_invalid and rank0 else []:
            typer.echo(f"warning: {warning}", err=True)
        report = embed_table(df, config, out=out, source_sha256=table_sha256(df), log=lambda msg: typer.echo(msg, err=True),
                             overwrite=overwrite)
    except (PreferenceDataError, CacheError, ValueError, OSError) as exc:
        fail(error_line(exc, out))
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
    if report.invalid_rows:
        rows.append(("invalid rows skipped", ", ".join(f"{n} with {kind}" for kind, n in report.invalid_rows.items())))
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=False).print(table)
# ---- end embed commands ----

