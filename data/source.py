"""Open any preference source through Hugging Face `datasets`: a hub id, a local data file, a folder of data
files (laid out like a hub repo, with or without README.md `configs`), or a `save_to_disk` folder. Every
split keeps the dataset's own name; nothing here knows about preference columns.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PreferenceDataError

# datasets' packaged builder for each file type; compressed variants (.gz, .zst, ...) are read too.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_NOT_DATA = re.compile(r"^(readme\.md|license.*|\.gitattributes|dataset_infos?\.json)$", re.IGNORECASE)
_NAME = re.compile(r"(\.(jsonl|json|parquet|csv|arrow))?(\.(gz|bz2|xz|zst))?$|-\d{5}-of-\d{5}\.\w+(\.\w+)?$", re.I)
_HOW_TO_FIX = "use .jsonl, .json, .parquet, .csv or .arrow (compressed .gz/.zst also work)"


@dataclass
class Part:
    """The rows of one split of a source."""

    split: str  # the dataset's split name
    records: list[dict[str, Any]]
    label: str  # how messages name it: the file, or "SOURCE split 'x'"

    def where(self, row: int) -> str:
        return f"{self.label} row {row}"

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(key for record in self.records for key in record))


def file_type(path: Path) -> str | None:
    """The datasets builder for a data file ('json', 'parquet', ...), None for other files."""
    suffixes = [s.lower() for s in path.suffixes]
    suffixes = suffixes[:-1] if suffixes and suffixes[-1] in _COMPRESSION else suffixes
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def _reason(exc: BaseException) -> str:
    """The useful cause of a datasets/pyarrow error, on one line."""
    if "error occurred while generating the dataset" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _file_split(path: Path) -> str:
    """The split datasets' file-name rules give this file in its folder (test.jsonl -> test), else train."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(path.parent)), base_path=str(path.parent))
    except Exception:  # no split pattern matches: datasets calls a lone file train
        return "train"
    return next((str(s) for s, fs in files.items() if any(Path(f).resolve() == path.resolve() for f in fs)), "train")


def _folder_builder(root: Path, config: str | None, data_dir: str | None):
    """datasets' builder for a folder. Where its file-name rules would merge files of different names into
    one split (train_prefs-*.parquet and train_sft-*.parquet both 'train'), each name is its own split, unless
    the README.md names its configs and their files."""
    import datasets

    builder = datasets.load_dataset_builder(str(root), config, data_dir=data_dir)
    splits = builder.config.data_files or {}
    files = [f for fs in splits.values() for f in fs]
    by_name: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(_NAME.sub("", Path(f).name), []).append(f)
    merged = any(len({_NAME.sub("", Path(f).name) for f in fs}) > 1 for fs in splits.values())
    readme = (root / "README.md").read_text(encoding="utf-8", errors="replace") if (root / "README.md").is_file() else ""
    configs = readme.startswith("---") and re.search(r"^configs:", readme.split("---", 2)[1], re.MULTILINE)
    if merged and not configs and all(re.fullmatch(r"\w+(\.\w+)*", name) for name in by_name):
        builder = datasets.load_dataset_builder(str(root), data_files=by_name)
    return builder, {Path(f).resolve() for f in files}


def _unused_files(root: Path, used: set[Path]) -> list[str]:
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file() and p.resolve() not in used
            and not _NOT_DATA.match(p.name) and not any(s.startswith(".") for s in p.relative_to(root).parts)]


def _load(path: Path, source: str, config, revision, data_dir, split, limit, warnings) -> tuple[Any, str]:
    """(the dataset or its dict of splits, the label pattern for its splits)."""
    import datasets

    if path.is_file():
        if file_type(path) is None:
            raise PreferenceDataError(f"{path} has an unsupported extension '{''.join(path.suffixes) or '(none)'}'; "
                                      f"{_HOW_TO_FIX}")
        if path.stat().st_size == 0:
            raise PreferenceDataError(f"{path} holds no records; remove the empty file or fill it")
        return datasets.load_dataset(file_type(path), data_files={_file_split(path): str(path)}, streaming=True), str(path)
    if path.is_dir() and data_dir is None and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return datasets.load_from_disk(str(path)), f"{path} split '{{split}}'"
    if path.is_dir():
        builder, used = _folder_builder(path, config, data_dir)
        unused = _unused_files(path / (data_dir or ""), used)
        if unused:
            shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
            warnings.append(f"ignored {len(unused)} file{'s' if len(unused) != 1 else ''} in {path} that are not this "
                            f"dataset's data ({builder.name} files): {shown}")
        return builder.as_streaming_dataset(), f"{path / (data_dir or '')} split '{{split}}'"
    label = f"{source}{'/' + data_dir if data_dir else ''} split '{{split}}'"
    options = dict(revision=revision, data_dir=data_dir, streaming=limit is not None)  # --limit: stream, not download
    files = {}
    if split is not None and limit is None:  # download only that split's files ('hf://datasets/ID@REV/PATH' -> PATH)
        files = datasets.load_dataset_builder(source, config, revision=revision, data_dir=data_dir).config.data_files or {}
    if split in files:
        options.update(data_dir=None, data_files={split: [f.split("@", 1)[-1].split("/", 1)[-1] for f in files[split]]})
    try:
        return ({split: datasets.load_dataset(source, config, split=split, **options)} if split is not None
                else datasets.load_dataset(source, config, **options)), label
    except ValueError as exc:  # a split the dataset does not have may still be a value of a split column
        if split is None or "Unknown split" not in str(exc):
            raise
        return datasets.load_dataset(source, config, **options), label


def _bad_jsonl_row(path: Path) -> str | None:
    """'row N: what is wrong' for the first line of a plain .jsonl file that is not one UTF-8 JSON object
    (N counts lines from 1, blank lines included); None when every line is fine."""
    import json

    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                return f"row {number} is not UTF-8 text (byte {exc.start + 1} of the row)"
            except json.JSONDecodeError as exc:
                return f"row {number} is not valid JSON ({exc.msg} at character {exc.pos + 1})"
            if not isinstance(record, dict):
                return f"row {number} is a JSON {type(record).__name__}, not an object"
    return None


def _failure(source: str, path: Path, exc: Exception) -> str:
    reason = _reason(exc)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        bad = _bad_jsonl_row(path)
        if bad:
            return f"could not read {path}: {bad}; fix or remove that row (one JSON object per line, UTF-8)"
    if path.is_file():
        return (f"could not read {path} as {file_type(path)} ({reason}); check that the file is complete and of its "
                f"type (one JSON object per line for .jsonl), or {_HOW_TO_FIX}")
    if path.is_dir() and ("cast" in reason.lower() or "same columns" in reason.lower()):
        return (f"the data files in folder {path} do not all have the same columns ({reason}); datasets reads a folder "
                "as one dataset with one set of columns: give the files the same columns or load each on its own")
    if path.is_dir():
        return (f"could not read the data in folder {path} ({reason}); put .jsonl, .json, .parquet, .csv or .arrow "
                "files there (one type per folder), with a README.md `configs` section if you like, or write the "
                "folder with `datasets.save_to_disk`")
    import datasets

    offline = " and it is not in the local datasets cache (offline mode, HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else ""
    return (f"could not load '{source}' from the Hugging Face hub ({reason}){offline}; where the hub is reachable, "
            f"download it (`datasets.load_dataset('{source}').save_to_disk(DIR)`, or `hf download --repo-type dataset "
            f"{source} --local-dir DIR`), then pass DIR as the source or with --path (path= in Python)")


def open_source(source: str | Path, *, config: str | None = None, revision: str | None = None,
                data_dir: str | None = None, split: str | None = None, limit: int | None = None,
                warnings: list[str] | None = None) -> list[Part]:
    """The splits of a local file or folder or a hub dataset id, read with `datasets`.

    config, revision: the dataset's configuration (subset) and git revision (hub ids; config also for
    folders whose README.md defines `configs`). data_dir: a sub-folder of the dataset to read.
    split: read only this split when the dataset has it (otherwise every split, so that a split column
    can still supply it). limit: read at most this many rows per split (hub ids are then streamed).
    Notes about the source (files that are not its data) are appended to `warnings`.
    """
    import datasets

    path = Path(source).expanduser()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)  # datasets logs the errors it raises; we reword them
    try:
        loaded, label = _load(path, str(source), config, revision, data_dir, split, limit,
                              warnings if warnings is not None else [])
        loaded = loaded if isinstance(loaded, dict) else {"train": loaded}  # (Iterable)DatasetDict are dicts
        names = [split] if split in loaded else list(loaded)
        return [Part(name, list(itertools.islice(loaded[name], limit)), label.replace("{split}", name)) for name in names]
    except PreferenceDataError:
        raise
    except Exception as exc:  # datasets, pyarrow, fsspec and the hub client raise many types
        raise PreferenceDataError(_failure(str(source), path, exc)) from None
    finally:
        datasets.logging.set_verbosity(level)
