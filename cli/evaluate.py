"""`micro eval` and `micro audit`."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..evaluate.config import AuditConfig, EvalConfig
from ._app import app, fail
from ._common import load_source, source_options
from ._options import config_options

EvalSource = typer.Argument(..., help="Recipe, data file/folder or hub id (as for `micro embed`), or a finished cache .h5 made with the run's backbone.")
MaskFrom = typer.Option(None, "--mask-from", help="Mask the heads flagged in this audit.json (`micro audit`); repeat for several audits.")


def _source(source: str, options: dict):
    """A finished cache is used as it is; anything else is read as preference data."""
    from ..evaluate.source import is_cache

    return source if is_cache(source) else load_source(source, options)


def _run_on_source(run, run_dir: str, source: str, source_opts: dict, out: str, written: tuple[str, ...], overwrite: bool,
                   make_config) -> dict:
    """The part `micro eval` and `micro audit` share: refuse an existing result (any of the files `written`),
    build the config, read the source (or use a finished cache), run; every project error is one line and
    exit 2."""
    import os
    from pathlib import Path

    for name in written:
        if os.path.lexists(Path(out) / name) and not overwrite:
            fail(f"{Path(out) / name} exists; pass --overwrite to replace it or choose another --out")
    try:
        config = make_config()
        return run(run_dir, _source(source, source_opts), out, config, source_name=source,
                   log=lambda msg: typer.echo(msg, err=True), overwrite=overwrite)
    except (ValueError, OSError) as exc:  # the project's errors are ValueErrors; OSError: unreadable files
        fail(exc)


def _print(title: str, header: list[str], rows: list[tuple[str, list[str]]], first: str = "Method") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first)
    for name in header:
        table.add_column(name, justify="right")
    for name, cells in rows:
        table.add_row(name, *cells)
    Console().print(table)


def _source_command(name: str, config_class: type):
    """`micro NAME`: a command that reads a source (source_options) and takes config_class's fields (config_options)."""
    def register(command):
        return app.command(name)(config_options(config_class)(source_options(command)))

    return register


@_source_command("eval", EvalConfig)
def eval_cmd(
    run_dir: str = typer.Argument(..., help="stage-1 run directory (`micro fit-mixture`)"),
    source: str = EvalSource,
    out: str = typer.Option(..., "--out", help="output directory (results.json, results.csv, table.md, rewardbench/)"),
    mask_from: Optional[List[str]] = MaskFrom,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing OUT/results.json, results.csv, table.md"),
    as_json: bool = typer.Option(False, "--json", help="print results.json instead of the table"),
    overrides: dict = None,
    source_opts: dict = None,
) -> None:
    """Score a run on any preference data: every stage-1 head, the routed mixture (stage-1 router, or an
    adapted router with a context), the single baseline when the run has a sibling; RewardBench section
    scores when the subsets are RewardBench's (the `rewardbench` recipe, or a `subset` attribute)."""
    import json

    from ..evaluate import resolve_mask, run_eval
    from ..evaluate.report import section_rows, subset_rows

    def make_config():
        if mask_from:
            overrides["mask_heads"] = sorted(set(overrides.get("mask_heads", [])) | set(resolve_mask(None, mask_from)))
        return EvalConfig(**overrides)

    from ..evaluate.report import EVAL_FILES

    results = _run_on_source(run_eval, run_dir, source, source_opts, out, EVAL_FILES, overwrite, make_config)
    if as_json:
        typer.echo(json.dumps(results))
        return
    _print(f"Accuracy of {run_dir} on {source}", *subset_rows(results))
    if "rewardbench" in results:
        _print("RewardBench sections (reward-bench's weighting)", *section_rows(results))
    for note in results["notes"]:
        typer.echo(f"note: {note}")
    for name, file in results["files"].items():
        typer.echo(f"{name}: {file}")


@_source_command("audit", AuditConfig)
def audit_cmd(
    run_dir: str = typer.Argument(..., help="stage-1 run directory (`micro fit-mixture`)"),
    source: str = EvalSource,
    out: str = typer.Option(..., "--out", help="output directory (audit.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing OUT/audit.json"),
    as_json: bool = typer.Option(False, "--json", help="print audit.json instead of the table"),
    overrides: dict = None,
    source_opts: dict = None,
) -> None:
    """Safety audit (paper section 8): score every head on safety pairs (safe response chosen, e.g. recipes
    `hh-rlhf` harmless or `pku-saferlhf`) and flag heads that prefer the unsafe response clearly more often
    than the single head. Mask them with `--mask-from OUT/audit.json`."""
    import json

    from ..evaluate import run_audit

    result = _run_on_source(run_audit, run_dir, source, source_opts, out, ("audit.json",), overwrite,
                            lambda: AuditConfig(**overrides))
    if as_json:
        typer.echo(json.dumps(result))
        return
    ref = result["reference"]
    rows = [(f"Head {h['head']}", [str(h["n"]), f"{h['accuracy']:.4f}", f"{h['mean_margin']:+.4f}", f"{h['excess']:+.4f}",
                                   f"{h['lower_bound']:+.4f}", "FLAGGED" if h["flagged"] else "ok"]) for h in result["heads"]]
    _print(f"Safety audit of {run_dir} on {source} (reference: {ref['name']}, accuracy {ref['accuracy']:.4f})",
           ["pairs", "accuracy", "mean margin", "excess rejected", "lower bound", "flag"], rows, first="Head")
    typer.echo(f"flagged heads: {result['flagged'] or 'none'}" + (f" (mask them: --mask-from {result['files']['audit']})" if result["flagged"] else ""))
    typer.echo(f"audit: {result['files']['audit']}")
