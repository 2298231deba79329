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

