"""Read local data files (jsonl, json, parquet, csv; .gz for the text formats) into lists of records.

Each file becomes one or more `FileFrame`s: a JSON file shaped `{split: [records]}` gives one per
split. Rows are counted from 1 in error messages, in file order (for .jsonl, non-blank lines).
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PreferenceDataError

DATA_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")
# JSON files a hub snapshot or a `datasets` export may carry next to the data, never data themselves.
_METADATA_FILES = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}
_SPLIT_ALIASES = {"train": "train", "test": "test", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "eval": "eval"}
_SPLIT_ORDER = {"train": 0, "validation": 1, "eval": 2, "test": 3}
_HOW_TO_FIX = "use .jsonl, .json, .parquet or .csv (.jsonl.gz, .json.gz and .csv.gz also work)"


@dataclass
class FileFrame:
    """The records of one file (or one split of a `{split: [...]}` JSON file)."""

    path: Path
    records: list[dict[str, Any]]
    split: str | None = None  # from the JSON key or the file name, None when neither says
    subset: str | None = None  # sub-folder below the folder that was read (hub layouts), else None
    label: str = field(default="")  # how error messages name the file

    def where(self, row: int) -> str:
        return f"{self.label or self.path} row {row}"

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record))
        return list(seen)


def extension(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(DATA_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return "".join(path.suffixes[-2:]).lower() or "(none)"


def split_from_name(path: Path) -> str | None:
    """'train.jsonl' -> train, 'test-00000-of-00001.parquet' -> test, 'valid_x.csv' -> validation."""
    stem = path.name.lower()
    ext = extension(path)
    if stem.endswith(ext):
        stem = stem[: -len(ext)]
    first = re.split(r"[-_.]", stem, maxsplit=1)[0]
    return _SPLIT_ALIASES.get(first)


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreferenceDataError(
                    f"{path} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line of a .jsonl file must be one JSON object: fix or remove that line"
                ) from None
            if not isinstance(value, dict):
                raise PreferenceDataError(
                    f"{path} line {lineno} holds a JSON {type(value).__name__}, not an object; "
                    "each line of a .jsonl file must be one record like {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}"
                )
            records.append(value)
    return records


def _read_json(path: Path) -> list[tuple[str | None, list[dict]]]:
    with _open_text(path) as fh:
        try:
            value = json.load(fh)
        except json.JSONDecodeError as exc:
            hint = " (it looks like JSON Lines: rename it to .jsonl)" if exc.msg == "Extra data" else ""
            raise PreferenceDataError(
                f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){hint}; "
                "a .json file must hold a list of records or {split: [records]}"
            ) from None
    if isinstance(value, list):
        groups = [(None, value)]
    elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        groups = [(str(k), v) for k, v in value.items()]
    else:
        raise PreferenceDataError(
            f"{path} holds a JSON {type(value).__name__} that is neither a list of records nor "
            "{split: [records]}; reshape it into one of those"
        )
    for split, records in groups:
        for i, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                where = f"{path} row {i}" + (f" of split '{split}'" if split else "")
                raise PreferenceDataError(f"{where} is a JSON {type(record).__name__}, not an object (record)")
    return groups


def _read_table(path: Path, ext: str) -> list[dict]:
    import pandas as pd

    try:
        if ext == ".parquet":
            frame = pd.read_parquet(path)
        else:  # csv: keep empty cells as "" so validation can name them instead of seeing NaN
            frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except Exception as exc:  # pyarrow / parser errors have many types
        raise PreferenceDataError(
            f"could not read {path} as {ext[1:]} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"check that the file is complete and really {ext[1:]}, or {_HOW_TO_FIX}"
        ) from None
    return frame.to_dict("records")


def read_file(path: str | Path, *, root: Path | None = None) -> list[FileFrame]:
    """Read one data file. `root` is the folder being read, used to name the file's subset."""
    path = Path(path)
    if not path.exists():
        raise PreferenceDataError(f"file not found: {path}; check the path")
    ext = extension(path)
    if ext not in DATA_EXTENSIONS:
        raise PreferenceDataError(f"{path} has an unsupported extension '{ext}'; {_HOW_TO_FIX}")
    subset = None
    if root is not None and path.parent != root:
        subset = path.parent.relative_to(root).as_posix()
    try:
        if ext in (".jsonl", ".jsonl.gz"):
            groups = [(None, _read_jsonl(path))]
        elif ext in (".json", ".json.gz"):
            groups = _read_json(path)
        else:
            groups = [(None, _read_table(path, ext))]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise PreferenceDataError(
            f"could not read {path} ({type(exc).__name__}: {exc}); check that the file is readable, "
            "complete and UTF-8 text (or gzip of it)"
        ) from None
    name_split = split_from_name(path)
    return [FileFrame(path=path, records=records, split=key or name_split, subset=subset, label=str(path))
            for key, records in groups]


def data_files(root: Path, patterns: list[str] | None = None) -> list[Path]:
    """Data files under a folder (recursively, sorted), optionally only those matching glob patterns."""
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.name.lower() in _METADATA_FILES or extension(p) not in DATA_EXTENSIONS:
            continue
        if patterns and not any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            continue
        files.append(p)
    return files


def read_path(path: str | Path, patterns: list[str] | None = None) -> list[FileFrame]:
    """Read a file, or every data file under a folder."""
    path = Path(path)
    if not path.exists():
        raise PreferenceDataError(f"file or folder not found: {path}; check the path")
    if path.is_file():
        return read_file(path)
    files = data_files(path, patterns)
    if not files:
        wanted = f" matching {', '.join(patterns)}" if patterns else ""
        raise PreferenceDataError(f"no data files{wanted} in folder {path}; {_HOW_TO_FIX}")
    frames = [frame for f in files for frame in read_file(f, root=path)]
    # train first, then validation/eval, then test, whatever the file names sort as
    return sorted(frames, key=lambda fr: _SPLIT_ORDER.get(fr.split or "train", len(_SPLIT_ORDER)))
