"""`micro embed`."""

from __future__ import annotations

import typer

from ..embedcache.config import EmbedConfig
from ._app import app, fail
from ._common import OverwriteOpt, SourceArg, load_source, source_options
from ._options import config_options

# ---- embed commands ----
@app.command("embed")
@config_options(EmbedConfig, exclude=("progress",))
@source_options
def embed(
    source: SourceArg,
    out: str = typer.Option(..., "--out", help="The HDF5 cache to write (e.g. cache.h5)."),
    overwrite: OverwriteOpt = False,
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    overrides: dict = None,
    source_opts: dict = None,
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
    from ..outputs import check_file_target, error_line, refuse_overlap

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        config = EmbedConfig(**overrides)
        refuse_overlap(check_file_target(out), [source, source_opts.get("path")])
        df = load_source(source, source_opts)
        for warning in df.attrs.get("warnings", []) if source_opts["skip_invalid"] and rank0 else []:
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
        from ..embedcache.report import print_report

        print_report(report)


# ---- end embed commands ----

