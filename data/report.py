"""The terminal view of a preference table's summary (`micro data preview`)."""

from __future__ import annotations


def print_summary(summary: dict) -> None:
    """Print `summarize(table)` as `micro data preview` shows it: pairs per split and attribute, formats,
    distinct texts, what was dropped, a sample row, warnings."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    table = Table(title=f"{summary['source']}: {summary['pairs']} pairs")
    table.add_column("split")
    table.add_column("attribute")
    table.add_column("pairs", justify="right")
    for split, entry in summary["splits"].items():
        for attribute, n in entry["attributes"].items():
            table.add_row(split, attribute, str(n))
        table.add_row(f"[bold]{split}[/bold]", "[bold]all[/bold]", f"[bold]{entry['pairs']}[/bold]", end_section=True)
    console.print(table)
    for where, fmt in summary["formats"].items():
        console.print(f"format of {where}: {fmt}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"distinct prompts: {summary['distinct_prompts']}   distinct responses: {summary['distinct_responses']}"
                  f"   distinct contexts: {summary['distinct_contexts']}")
    if summary.get("users"):
        console.print("no contexts: each attribute is a user id; stage 1 learns each user's routing over the heads "
                      "(docs/users.md)", markup=False, highlight=False, soft_wrap=True)
    console.print(f"duplicates dropped: {summary['duplicates_dropped']}   invalid rows dropped: {summary['rows_dropped']}"
                  f"   sha256: {summary['sha256'][:16]}")
    if summary["sample"]:
        sample = Table(title="sample row", show_header=False)
        for key, value in summary["sample"].items():
            sample.add_row(key, Text("" if value is None else str(value)))  # Text: no markup parsing of data
        console.print(sample)
    for warning in summary["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
