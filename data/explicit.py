"""Map the columns of local or downloaded files onto the preference table (TRL's explicit format:
prompt/chosen/rejected columns), falling back to the implicit format (full transcripts or
conversations in chosen/rejected, no prompt column)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import pandas as pd

from .errors import PreferenceDataError, closest, missing_column
from .files import FileFrame
from .implicit import as_messages, is_transcript, response_text, split_conversations, split_transcripts
from .table import PROBLEM, WHERE, build_table


@dataclass(frozen=True)
class ColumnKeys:
    """Which source column holds each table column (the --*-key options)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    attribute: str = "attribute"
    context: str = "context"
    split: str = "split"

    def changed(self) -> dict[str, str]:
        """The keys set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _optional_key(frame: FileFrame, column: str, key: str, default_key: str, warnings: list[str]) -> str | None:
    """The source column for an optional table column, None when absent. A key the user set must
    exist; a default key that is missing while a near-spelling exists earns a warning."""
    columns = frame.columns
    if key in columns:
        return key
    if key != default_key:
        raise missing_column(key, columns, frame.label, f"{column}-key")
    guess = closest(key, columns, cutoff=0.8)
    if guess is not None:
        warnings.append(f"no column '{key}' in {frame.label} but there is '{guess}'; use --{column}-key {guess} "
                        f"to use it (for now every row gets the default {column})")
    return None


def _implicit(record: dict, keys: ColumnKeys) -> tuple[Any, Any, Any]:
    chosen, rejected = record.get(keys.chosen), record.get(keys.rejected)
    if is_transcript(chosen) and is_transcript(rejected):
        return split_transcripts(chosen, rejected)
    c_msgs, r_msgs = as_messages(chosen), as_messages(rejected)
    if c_msgs is not None and r_msgs is not None:
        return split_conversations(c_msgs, r_msgs)
    raise ValueError("without a prompt column, chosen and rejected must both be full '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                     "transcripts or both be conversations (lists of {role, content})")


def frame_records(frame: FileFrame, keys: ColumnKeys, warnings: list[str], *, strict: bool,
                  default_split: str | None = None,
                  attribute_of: Callable[[FileFrame], str | None] | None = None) -> list[dict]:
    """Records of one file, renamed to the table's columns (validation happens in build_table)."""
    if not frame.records:
        raise PreferenceDataError(f"{frame.label} holds no records; remove the empty file or fill it")
    columns = frame.columns
    defaults = ColumnKeys()
    for column in ("chosen", "rejected"):
        if getattr(keys, column) not in columns:
            raise missing_column(getattr(keys, column), columns, frame.label, f"{column}-key")
    implicit = keys.prompt not in columns
    if implicit:
        first = frame.records[0] if frame.records else {}
        if keys.prompt != defaults.prompt or not (is_transcript(first.get(keys.chosen))
                                                   or as_messages(first.get(keys.chosen)) is not None):
            raise missing_column(keys.prompt, columns, frame.label, "prompt-key")
    attribute_key = _optional_key(frame, "attribute", keys.attribute, defaults.attribute, warnings)
    context_key = _optional_key(frame, "context", keys.context, defaults.context, warnings)
    split_key = _optional_key(frame, "split", keys.split, defaults.split, warnings)
    frame_attribute = attribute_of(frame) if attribute_of else None
    frame_split = frame.split or default_split

    records, failed, first_failure = [], 0, None
    for row, record in enumerate(frame.records, start=1):
        where = frame.where(row)
        if implicit:
            try:
                prompt, chosen, rejected = _implicit(record, keys)
            except ValueError as exc:
                if strict:  # build_table reports it with every other bad row
                    records.append({WHERE: where, PROBLEM: ("a transcript that cannot be split", f"{where}: {exc}")})
                    continue
                failed += 1
                first_failure = first_failure or f"{where}: {exc}"
                continue
        else:
            prompt = record.get(keys.prompt)
            chosen = response_text(record.get(keys.chosen), prompt)
            rejected = response_text(record.get(keys.rejected), prompt)
        records.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "attribute": record.get(attribute_key) if attribute_key else frame_attribute,
            "context": record.get(context_key) if context_key else None,
            "split": record.get(split_key) if split_key else frame_split,
            WHERE: where,
        })
    if failed:
        warnings.append(f"dropped {failed} pair{'s' if failed != 1 else ''} whose prompt could not be split off "
                        f"(first: {first_failure})")
    return records


def table_from_frames(frames: list[FileFrame], keys: ColumnKeys | None = None, *, source: str, strict: bool = True,
                      default_split: str | None = None,
                      attribute_of: Callable[[FileFrame], str | None] | None = None) -> pd.DataFrame:
    """Read every frame with the same column mapping and validate them together into one table."""
    keys = keys or ColumnKeys()
    warnings: list[str] = []
    records = [r for frame in frames
               for r in frame_records(frame, keys, warnings, strict=strict, default_split=default_split,
                                      attribute_of=attribute_of)]
    names = {c: k for c, k in keys.as_dict().items()}
    return build_table(records, source=source, strict=strict, column_names=names, warnings=warnings)
