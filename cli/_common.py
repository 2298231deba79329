"""Options shared by every command that reads preference data (micro data preview, micro embed, ...)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

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


def parse_int_list(value: str, flag: str) -> list[int]:
    """'10,25,50' -> [10, 25, 50]; anything else is refused naming the flag."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers such as 10,25,50, not {value!r}") from None


def _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit,
                 dataset_config=None, revision=None, skip_invalid=False):
    from ..data import load_preferences

    return load_preferences(source, path=path, split=split, dataset_config=dataset_config, revision=revision,
                            prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                            attribute_key=attribute_key, context_key=context_key, split_key=split_key, limit=limit,
                            skip_invalid=skip_invalid)


