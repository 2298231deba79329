"""`micro compare`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ._app import app, fail


@app.command("compare")
def compare_cmd(
    results: List[str] = typer.Argument(..., help="two or more `micro adapt --out` directories (or their results.json)"),
    out: str = typer.Option(None, "--out", help="folder for compare.json, compare.csv, compare.md and compare.png"),
    budget: int = typer.Option(None, "--budget", help="budget to compare at  [default: the largest budget every result has]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the files of an earlier comparison in --out"),
) -> None:
    """Put several stage-2 results side by side: average accuracy per method and run, and the settings that differ."""
    from rich.console import Console
    from rich.table import Table

    from ..compare import CompareError, average_table, compare, write_comparison

    try:
        comparison = compare(results, budget)
    except CompareError as exc:
        fail(exc)
    if out and any(Path(out, f"compare.{ext}").exists() for ext in ("json", "csv", "md", "png")) and not overwrite:
        fail(f"--out {out} already holds a comparison; pass --overwrite to replace it or choose another folder.")
    header, body = average_table(comparison)
    console = Console()
    table = Table(title=f"Average accuracy at budget {comparison['budget']} (mean ± std over seeds)")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
    for r in comparison["results"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["differs"].items()) or "same settings"
        console.print(f"{r['run_id']}: {r['path']}  ({settings})", markup=False)
    if out:
        try:
            written = write_comparison(comparison, out, overwrite=overwrite)
        except ValueError as exc:  # OutputError: an input among the files, a file that appeared meanwhile
            fail(exc)
        for kind, path in written.items():
            console.print(f"{kind}: {path}", markup=False)
