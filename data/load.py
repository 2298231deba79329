"""`load_preferences`: one entry point from any source (recipe, file or folder, hub id) to the table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .errors import PreferenceDataError, closest
from .columns import ColumnKeys
from .formats import table_from_parts
from .recipes import RECIPES
from .source import file_type, open_source

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _unknown_source(source: str) -> PreferenceDataError:
    guess = closest(source.lower(), RECIPES)
    msg = f"unknown source '{source}': it is neither a built-in recipe, an existing file or folder, nor a hub id (owner/name)"
    if guess is not None:
        msg += f"; did you mean '{guess}'?"
    return PreferenceDataError(msg + f"; recipes: {', '.join(RECIPES)}")


def _select(df: pd.DataFrame, split: str | None, limit: int | None, source: str) -> pd.DataFrame:
    attrs = dict(df.attrs)
    if split is not None:
        available = list(dict.fromkeys(df["split"]))
        if split not in available:
            raise PreferenceDataError(f"split '{split}' not found in {source}; available splits: {', '.join(available)}")
        df = df[df["split"] == split]
    if limit is not None:
        df = df.groupby("split", sort=False, group_keys=False).head(limit)
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    return df


def load_preferences(source: str, *, path: str | None = None, split: str | None = None,
                     dataset_config: str | None = None, revision: str | None = None,
                     prompt_key: str = ColumnKeys.prompt, chosen_key: str = ColumnKeys.chosen,
                     rejected_key: str = ColumnKeys.rejected, attribute_key: str = ColumnKeys.attribute,
                     context_key: str = ColumnKeys.context, split_key: str = ColumnKeys.split,
                     limit: int | None = None, skip_invalid: bool = False) -> pd.DataFrame:
    """Load preference pairs into one validated table.

    source: a recipe name (see RECIPES; `path` then points it at local files instead of the hub), a data
        file (.jsonl/.json/.parquet/.csv/.arrow, maybe compressed), a folder of them or from `save_to_disk`,
        or a hub dataset id (owner/name), read with `datasets`; the format is found (micro.data.formats).
    split: keep only this split (the dataset's own split names, or a split column's values).
    dataset_config, revision: the dataset's configuration (subset) and, for hub ids, its git revision.
    limit: at most this many pairs per split, from its first `limit` rows (a hub id is then streamed).
    skip_invalid: drop invalid rows of files and hub ids (counted in df.attrs["invalid_rows"]) instead of
        refusing them all in one PreferenceDataError; recipes always drop them.
    *_key: source column holding each table column, for files and hub ids (recipes know their columns).

    Returns a DataFrame with columns prompt, chosen, rejected, attribute, context, split (see
    micro.data.table) and attrs source, formats, duplicates_dropped, rows_dropped, warnings.
    Raises PreferenceDataError with a message that names the file, row and column and says how to fix.
    """
    if limit is not None and limit < 1:
        raise PreferenceDataError(f"limit must be a positive number of pairs, got {limit}")
    keys = ColumnKeys(prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key)
    name = source.strip()
    local = Path(name).expanduser()
    if name.lower() in RECIPES:
        refused = [f"--{c}-key" for c in keys.changed()] + ["--dataset-config"] * (dataset_config is not None) \
            + ["--revision"] * (revision is not None)
        if refused:
            raise PreferenceDataError(f"{', '.join(refused)} only apply to files and hub ids; recipe '{name}' knows its own data")
        df = RECIPES[name.lower()](path=path)
        return _select(df, split, limit, name)
    if local.exists():
        if path is not None:
            raise PreferenceDataError(f"--path only applies to recipes and hub ids; '{name}' is already a path")
        if revision is not None:
            raise PreferenceDataError(f"--revision only applies to hub ids; '{name}' is a local path")
        target = str(local)
    elif file_type(local) is not None or name.startswith((".", "/", "~")) or "\\" in name:  # a path, not an id
        raise PreferenceDataError(f"file not found: {name}; check the path")
    elif _HUB_ID.match(name):
        target = path if path is not None else name
    else:
        raise _unknown_source(name)
    warnings: list[str] = []
    parts = open_source(target, config=dataset_config, revision=revision, split=split, limit=limit, warnings=warnings)
    df = table_from_parts(parts, keys, source=name, strict=not skip_invalid, warnings=warnings)
    return _select(df, split, limit, name)
