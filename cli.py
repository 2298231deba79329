"""The `micro` command: typer commands only. Each command parses, calls the library, prints."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="micro",
    help="Personalized reward modeling (MiCRo): embed once, then fit mixtures and adapt routers in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- data commands (micro data ...) ----
data_app = typer.Typer(help="Inspect preference data: built-in recipes, local files, hub ids.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(
    source: str = typer.Argument(..., help="Recipe name (see `micro data recipes`), a .jsonl/.json/.parquet/.csv file or folder, or a hub dataset id."),
    path: str = typer.Option(None, "--path", help="Local files for a recipe or hub id (instead of downloading)."),
    split: str = typer.Option(None, "--split", help="Keep only this split."),
    prompt_key: str = typer.Option("prompt", "--prompt-key", help="Column holding the prompt."),
    chosen_key: str = typer.Option("chosen", "--chosen-key", help="Column holding the preferred response."),
    rejected_key: str = typer.Option("rejected", "--rejected-key", help="Column holding the other response."),
    attribute_key: str = typer.Option("attribute", "--attribute-key", help="Column holding the attribute/group."),
    context_key: str = typer.Option("context", "--context-key", help="Column holding the context text."),
    split_key: str = typer.Option("split", "--split-key", help="Column holding the split name."),
    limit: int = typer.Option(None, "--limit", help="At most this many pairs per split."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Load SOURCE into the preference table and show counts, distinct texts, a sample row and warnings."""
    import json

    from .data import PreferenceDataError, load_preferences, summarize

    try:
        df = load_preferences(source, path=path, split=split, prompt_key=prompt_key, chosen_key=chosen_key,
                              rejected_key=rejected_key, attribute_key=attribute_key, context_key=context_key,
                              split_key=split_key, limit=limit)
    except PreferenceDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = summarize(df)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    _print_data_summary(summary)


@data_app.command("recipes")
def data_recipes() -> None:
    """List the built-in recipes."""
    from rich.console import Console
    from rich.table import Table

    from .data import describe_recipes

    table = Table("recipe", "what it loads")
    for name, doc in describe_recipes().items():
        table.add_row(name, doc)
    Console().print(table)


def _print_data_summary(summary: dict) -> None:
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
    console.print(f"distinct prompts: {summary['distinct_prompts']}   distinct responses: {summary['distinct_responses']}"
                  f"   distinct contexts: {summary['distinct_contexts']}")
    console.print(f"duplicates dropped: {summary['duplicates_dropped']}   invalid rows dropped: {summary['rows_dropped']}"
                  f"   sha256: {summary['sha256'][:16]}")
    if summary["sample"]:
        sample = Table(title="sample row", show_header=False)
        for key, value in summary["sample"].items():
            sample.add_row(key, Text("" if value is None else str(value)))  # Text: no markup parsing of data
        console.print(sample)
    for warning in summary["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
# ---- end data commands ----

# ---- embed commands ----
# ---- end embed commands ----

# ---- stage-1 commands (fit-mixture, simulate) ----
# ---- end stage-1 commands ----

# ---- stage-2 commands (adapt) ----
# ---- end stage-2 commands ----

# ---- demo command ----
# ---- end demo command ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
