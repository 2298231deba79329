"""`micro data preview|recipes`."""

from __future__ import annotations

import typer

from ._app import app, fail
from ._common import (AttributeKey, ChosenKey, ContextKey, DatasetConfigOpt, LimitOpt, PathOpt, PromptKey, RejectedKey,
                      RevisionOpt, SkipInvalidOpt, SourceArg, SplitKey, SplitOpt, _load_source)

# ---- data commands (micro data ...) ----
data_app = typer.Typer(help="Inspect preference data: built-in recipes, local files, hub ids.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(
    source: SourceArg,
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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Load SOURCE into the preference table and show its format, counts, distinct texts, a sample row and warnings."""
    import json

    from ..data import PreferenceDataError, summarize

    try:
        df = _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit,
                          dataset_config=dataset_config, revision=revision, skip_invalid=skip_invalid)
    except PreferenceDataError as exc:
        fail(exc)
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

    from ..data import describe_recipes

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
    for where, fmt in summary["formats"].items():
        console.print(f"format of {where}: {fmt}", markup=False, highlight=False, soft_wrap=True)
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

