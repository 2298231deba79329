"""`load_preferences`: one entry point from any source (recipe, file or folder, hub id) to the table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from . import hub
from .errors import PreferenceDataError, closest
from .explicit import ColumnKeys, table_from_frames
from .files import DATA_EXTENSIONS, read_path
from .recipes import RECIPES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_file(source: str) -> bool:
    return source.lower().endswith(DATA_EXTENSIONS) or source.startswith((".", "/", "~")) or "\\" in source


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
        if limit < 1:
            raise PreferenceDataError(f"limit must be a positive number of pairs, got {limit}")
        df = df.groupby("split", sort=False, group_keys=False).head(limit)
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    return df


def load_preferences(source: str, *, path: str | None = None, split: str | None = None,
                     prompt_key: str = "prompt", chosen_key: str = "chosen", rejected_key: str = "rejected",
                     attribute_key: str = "attribute", context_key: str = "context", split_key: str = "split",
                     limit: int | None = None, skip_invalid: bool = False) -> pd.DataFrame:
    """Load preference pairs into one validated table.

    source: a recipe name (see RECIPES; `path` then points it at local files instead of the hub), a
        .jsonl/.json/.parquet/.csv file or a folder of them, or a Hugging Face dataset id (owner/name).
    split: keep only this split. limit: keep at most this many pairs per split (after validation).
    skip_invalid: drop invalid rows of files and hub ids (counted in df.attrs["invalid_rows"]) instead of
        refusing them all in one PreferenceDataError; recipes always drop them.
    *_key: source column holding each table column, for files and hub ids (recipes know their columns).

    Returns a DataFrame with columns prompt, chosen, rejected, attribute, context, split (see
    micro.data.table) and attrs source, duplicates_dropped, rows_dropped, warnings.
    Raises PreferenceDataError with a message that names the file, row and column and says how to fix.
    """
    keys = ColumnKeys(prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key)
    name = source.strip()
    if name.lower() in RECIPES:
        if keys.changed():
            options = ", ".join(f"--{c}-key" for c in keys.changed())
            raise PreferenceDataError(f"{options} only apply to files and hub ids; recipe '{name}' knows its own columns")
        df = RECIPES[name.lower()](path=path)
    elif Path(name).expanduser().exists():
        if path is not None:
            raise PreferenceDataError(f"--path only applies to recipes and hub ids; '{name}' is already a path")
        df = table_from_frames(read_path(Path(name).expanduser()), keys, source=name, strict=not skip_invalid)
    elif _looks_like_file(name):
        raise PreferenceDataError(f"file not found: {name}; check the path")
    elif _HUB_ID.match(name):
        frames = read_path(path) if path is not None else hub.hub_frames(name)
        df = table_from_frames(frames, keys, source=name, strict=not skip_invalid)
    else:
        raise _unknown_source(name)
    return _select(df, split, limit, name)
