"""`micro data preview|recipes`."""

from __future__ import annotations

import typer

from ._app import app, fail
from ._common import SourceArg, load_source, source_options

# ---- data commands (micro data ...) ----
data_app = typer.Typer(help="Inspect preference data: built-in recipes, local files, hub ids.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("preview")
@source_options
def data_preview(
    source: SourceArg,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    source_opts: dict = None,
) -> None:
    """Load SOURCE into the preference table and show its format, counts, distinct texts, a sample row and warnings."""
    import json

    from ..data import PreferenceDataError, summarize

    try:
        df = load_source(source, source_opts)
    except PreferenceDataError as exc:
        fail(exc)
    summary = summarize(df)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    from ..data.report import print_summary

    print_summary(summary)


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


# ---- end data commands ----

