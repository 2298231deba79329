"""Open any preference source through Hugging Face `datasets`: a hub id, a local data file, a folder of
data files (laid out like a hub repo, with or without its README.md `configs`), or a `save_to_disk`
folder. Every split keeps the dataset's own name; nothing here knows about preference columns.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PreferenceDataError

# datasets' packaged builder for each file type; compressed variants (.gz, .zst, ...) are read by datasets too.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
# Files a dataset repo or export carries next to its data that are never data.
_NOT_DATA = re.compile(r"^(readme\.md|license.*|\.gitattributes|dataset_infos?\.json|dataset_dict\.json|state\.json)$",
                       re.IGNORECASE)
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_EXTENSION = re.compile(r"(\.(jsonl|json|parquet|csv|arrow))?(\.(gz|bz2|xz|zst))?$", re.IGNORECASE)
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
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
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record))
        return list(seen)


def file_type(path: Path) -> str | None:
    """The datasets builder for a data file ('json', 'parquet', ...), None for other files."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    return BUILDERS.get(suffixes[-1]) if suffixes else None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs the errors it raises; we reword them into one line, so silence its logger meanwhile."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _reason(exc: BaseException) -> str:
    """The innermost useful cause of a datasets/pyarrow error, on one line."""
    while exc.__cause__ is not None and not str(exc).strip():
        exc = exc.__cause__
    if "error occurred while generating the dataset" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rows(dataset, limit: int | None) -> list[dict[str, Any]]:
    if limit is not None:
        dataset = dataset.take(limit) if hasattr(dataset, "take") else dataset
    return list(dataset)


def _parts(dsdict, label: str, split: str | None, limit: int | None) -> list[Part]:
    """One Part per split (only `split` when the dataset has it; else all, for a split column to say)."""
    names = [split] if split in dsdict else list(dsdict)
    return [Part(name, _rows(dsdict[name], limit), label.format(split=name)) for name in names]


def _file_split(path: Path) -> str:
    """The split datasets gives this file among its folder's files (test.jsonl -> test), 'train' if none."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(path.parent)), base_path=str(path.parent))
    except Exception:  # no pattern matches (e.g. only this file): datasets calls a lone file train
        return "train"
    return next((str(s) for s, fs in files.items() if any(Path(f).resolve() == path.resolve() for f in fs)), "train")


def _open_file(path: Path, split: str | None, limit: int | None) -> list[Part]:
    import datasets

    builder = file_type(path)
    if builder is None:
        raise PreferenceDataError(f"{path} has an unsupported extension '{''.join(path.suffixes) or '(none)'}'; {_HOW_TO_FIX}")
    if path.stat().st_size == 0:
        raise PreferenceDataError(f"{path} holds no records; remove the empty file or fill it")
    name = _file_split(path)
    try:
        dsdict = datasets.load_dataset(builder, data_files={name: str(path)}, streaming=True)
        return _parts(dsdict, str(path), split, limit)
    except Exception as exc:  # datasets, pyarrow, gzip and json raise many types for a bad file
        raise PreferenceDataError(f"could not read {path} as {builder} ({_reason(exc)}); check that the file is "
                                  f"complete and really {builder} (one JSON object per line for .jsonl), or {_HOW_TO_FIX}") from None


def _stem(path: str) -> str:
    """'data/train_prefs-00000-of-00001.parquet' -> 'train_prefs'."""
    return _SHARD.sub("", _EXTENSION.sub("", Path(path).name))


def _one_split_per_name(data_files: dict[str, list[str]]) -> dict[str, list[str]] | None:
    """Where datasets' file-name rules put files of different names into one split (train_prefs-*.parquet
    and train_sft-*.parquet both become 'train'), keep each name as its own split instead."""
    if all(len({_stem(f) for f in files}) == 1 for files in data_files.values()):
        return None
    by_name: dict[str, list[str]] = {}
    for files in data_files.values():
        for f in files:
            by_name.setdefault(_stem(f), []).append(f)
    return by_name if all(_SPLIT_NAME.match(n) for n in by_name) else None


def _card_configs(root: Path) -> bool:
    """Whether the folder's README.md names its configs and their data files (then its splits are final)."""
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    front_matter = text.split("---", 2)[1] if text.startswith("---") else ""
    return re.search(r"^configs:", front_matter, re.MULTILINE) is not None


def _unused_files(root: Path, used: set[Path]) -> list[str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts) and not _NOT_DATA.match(p.name)]
    return [p.relative_to(root).as_posix() for p in files if p.resolve() not in used]


def _open_folder(root: Path, config: str | None, data_dir: str | None, split: str | None, limit: int | None,
                 warnings: list[str]) -> list[Part]:
    import datasets

    try:
        builder = datasets.load_dataset_builder(str(root), config, data_dir=data_dir)
        data_files = {str(s): list(fs) for s, fs in (builder.config.data_files or {}).items()}
        by_name = None if _card_configs(root) else _one_split_per_name(data_files)
        if by_name is not None:
            builder = datasets.load_dataset_builder(str(root), data_files=by_name)
            data_files = by_name
        dsdict = builder.as_streaming_dataset()
        parts = _parts(dsdict, f"{root / (data_dir or '')} split '{{split}}'", split, limit)
    except PreferenceDataError:
        raise
    except Exception as exc:
        if "cast" in str(exc).lower() or "same columns" in str(exc).lower():
            raise PreferenceDataError(f"the data files in folder {root} do not all have the same columns ({_reason(exc)}); "
                                      "datasets reads a folder as one dataset with one set of columns: give the files "
                                      "the same columns or load each file on its own") from None
        raise PreferenceDataError(f"could not read the data files in folder {root} ({_reason(exc)}); put .jsonl, "
                                  ".json, .parquet, .csv or .arrow files there (one type per folder), a README.md with "
                                  "`configs`, or a folder written by `datasets.save_to_disk`") from None
    unused = _unused_files(root / (data_dir or ""), {Path(f).resolve() for fs in data_files.values() for f in fs})
    if unused:
        shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
        warnings.append(f"ignored {len(unused)} file{'s' if len(unused) != 1 else ''} in {root} that are not this "
                        f"dataset's data ({builder.name} files): {shown}")
    return parts


def _open_saved(root: Path, split: str | None, limit: int | None) -> list[Part]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(root))
    except Exception as exc:
        raise PreferenceDataError(f"could not read the `save_to_disk` folder {root} ({_reason(exc)}); "
                                  "write it again with Dataset.save_to_disk or DatasetDict.save_to_disk") from None
    dsdict = saved if isinstance(saved, datasets.DatasetDict) else {"train": saved}
    if limit is not None:
        dsdict = {name: ds.select(range(min(limit, len(ds)))) for name, ds in dsdict.items()}
    return _parts(dsdict, f"{root} split '{{split}}'", split, None)


def _open_hub(repo_id: str, config: str | None, revision: str | None, data_dir: str | None, split: str | None,
              limit: int | None) -> list[Part]:
    import datasets

    streaming = limit is not None  # --limit reads only the first rows: stream them instead of downloading all
    try:
        try:
            loaded = datasets.load_dataset(repo_id, config, revision=revision, data_dir=data_dir, split=split,
                                           streaming=streaming)
            dsdict = {split: loaded} if split is not None else loaded
        except ValueError as exc:
            if split is None or "Unknown split" not in str(exc):
                raise
            dsdict = datasets.load_dataset(repo_id, config, revision=revision, data_dir=data_dir, streaming=streaming)
        return _parts(dsdict, f"{repo_id}{'/' + data_dir if data_dir else ''} split '{{split}}'", split, limit)
    except PreferenceDataError:
        raise
    except Exception as exc:  # offline, unknown or gated repo, bad config name, HTTP errors
        offline = datasets.config.HF_HUB_OFFLINE
        raise PreferenceDataError(
            f"could not load '{repo_id}' from the Hugging Face hub ({_reason(exc)})"
            + (" and it is not in the local datasets cache (offline mode, HF_HUB_OFFLINE=1)" if offline else "")
            + "; where the hub is reachable, download it (`datasets.load_dataset(id).save_to_disk(DIR)`, or "
            "`hf download --repo-type dataset ID --local-dir DIR`), then pass DIR as the source or with --path "
            "(path= in Python)") from None


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
    warnings = warnings if warnings is not None else []
    with _quiet_datasets():
        path = Path(source).expanduser()
        if path.is_file():
            return _open_file(path, split, limit)
        if path.is_dir():
            if data_dir is None and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
                return _open_saved(path, split, limit)
            return _open_folder(path, config, data_dir, split, limit, warnings)
        return _open_hub(str(source), config, revision, data_dir, split, limit)
