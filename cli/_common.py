"""Options shared by every command that reads preference data (micro data preview, micro embed, ...)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..data.columns import ColumnKeys

# Source options shared by every command that reads preference data (micro data preview, micro embed).
SourceArg = Annotated[str, typer.Argument(help="Recipe name (see `micro data recipes`), a hub dataset id, a .jsonl/.json/.parquet/.csv/.arrow file, a folder of them, or a `save_to_disk` folder.")]
PathOpt = Annotated[Optional[str], typer.Option("--path", help="Local files for a recipe or hub id (instead of downloading).")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Keep only this split (the dataset's own split name); hub ids download only it.")]
DatasetConfigOpt = Annotated[Optional[str], typer.Option("--dataset-config", help="The dataset's configuration (subset) name, for hub ids and folders whose README.md defines configs.")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Git revision (branch, tag or commit) of a hub dataset.")]
PromptKey = Annotated[str, typer.Option("--prompt-key", help="Column holding the prompt.")]
ChosenKey = Annotated[str, typer.Option("--chosen-key", help="Column holding the preferred response.")]
RejectedKey = Annotated[str, typer.Option("--rejected-key", help="Column holding the other response.")]
AttributeKey = Annotated[str, typer.Option("--attribute-key", help="Column holding the attribute/group.")]
ContextKey = Annotated[str, typer.Option("--context-key", help="Column holding the context text.")]
SplitKey = Annotated[str, typer.Option("--split-key", help="Column holding the split name.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many pairs per split; reads only the first rows of each split (hub ids are streamed).")]


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (built beside it, swapped in when complete). Without it an existing output is refused.")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Drop invalid rows (empty or identical responses ...) and report their counts, instead of refusing the data.")]


def option_error(exc: Exception, config_class: type) -> str:
    """A config validation message with its leading field written as the flag: `seed must ...` -> `--seed must ...`."""
    from dataclasses import fields

    name, sep, rest = str(exc).partition(" ")
    return f"--{name.replace('_', '-')} {rest}" if sep and name in {f.name for f in fields(config_class)} else str(exc)


#: The options every command that reads preference data takes, in order, with their defaults.
SOURCE_OPTIONS = (
    ("path", PathOpt, None), ("split", SplitOpt, None), ("dataset_config", DatasetConfigOpt, None),
    ("revision", RevisionOpt, None), ("prompt_key", PromptKey, ColumnKeys.prompt), ("chosen_key", ChosenKey, ColumnKeys.chosen),
    ("rejected_key", RejectedKey, ColumnKeys.rejected), ("attribute_key", AttributeKey, ColumnKeys.attribute),
    ("context_key", ContextKey, ColumnKeys.context), ("split_key", SplitKey, ColumnKeys.split), ("limit", LimitOpt, None),
    ("skip_invalid", SkipInvalidOpt, False),
)


def source_options(command):
    """Decorate `command(..., source_opts: dict)`: the command gains the SOURCE_OPTIONS and receives them as
    one dict, which `load_source(name, source_opts)` reads."""
    import functools
    import inspect
    import typing

    signature = inspect.signature(command)
    resolved = typing.get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=resolved.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "source_opts"]
    names = [name for name, _, _ in SOURCE_OPTIONS]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann) for name, ann, default in SOURCE_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(source_opts={name: kwargs.pop(name) for name in names}, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in own]
    wrapper.__signature__ = signature.replace(parameters=params + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    del wrapper.__wrapped__  # typer must read the new signature
    return wrapper


def load_source(name: str, options: dict):
    """The preference table of SOURCE `name` with the source options a command received."""
    from ..data import load_preferences

    return load_preferences(name, **options)



