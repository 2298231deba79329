"""Map the columns of each split of a source onto the preference table: find which preference format
it is in (named for `micro data preview`), rename the columns and split every row into prompt and
responses (micro.data.pairs). Validation happens once, in micro.data.table.build_table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pandas as pd

from .columns import USER_KEY, ColumnKeys
from .errors import PreferenceDataError, closest, missing_column
from .pairs import as_messages, is_missing, is_transcript, split_pair
from .source import Part
from .table import PROBLEM, WHERE, build_table

STANDARD_EXPLICIT = "standard, explicit prompt (TRL)"
STANDARD_IMPLICIT = "standard, implicit prompt (TRL): prompt = common prefix"
CONVERSATIONAL_EXPLICIT = "conversational, explicit prompt (TRL)"
CONVERSATIONAL_IMPLICIT = "conversational, implicit prompt (TRL)"
PROMPT_AND_CONVERSATIONS = "prompt + conversations repeating it (UltraFeedback)"
TRANSCRIPTS = "Human/Assistant transcripts (HH-RLHF)"
TWO_RESPONSES = "context + response1/response2 + overall_preference (HelpSteer3)"
_HELPSTEER3 = ("context", "response1", "response2", "overall_preference")


def _optional_key(part: Part, column: str, key: str, default_key: str, warnings: list[str]) -> str | None:
    """The source column for an optional table column, None when absent. A key the user set must
    exist; a default key that is missing while a near-spelling exists earns a warning."""
    columns = part.columns
    if key in columns:
        return key
    if key != default_key:
        raise missing_column(key, columns, part.label, f"{column}-key")
    guess = closest(key, columns, cutoff=0.8)
    if guess is not None:
        warnings.append(f"no column '{key}' in {part.label} but there is '{guess}'; use --{column}-key {guess} "
                        f"to use it (for now every row gets the default {column})")
    return None


def _helpsteer3(record: dict) -> tuple | None:
    """(prompt, chosen, rejected): HelpSteer3's overall_preference runs from -3 (response1 much better) to 3
    (response2 much better); 0 is a tie, which states no preference (None)."""
    score, first, second = record["overall_preference"], record["response1"], record["response2"]
    if is_missing(score) or score == 0:
        return None
    return (record["context"], first, second) if score < 0 else (record["context"], second, first)


def detect_format(part: Part, keys: ColumnKeys) -> str:
    """The preference format of a split, from its columns and first row; a missing column raises the
    error that names it."""
    columns = part.columns
    if not part.records:
        raise PreferenceDataError(f"{part.label} holds no records; remove the empty file or fill it")
    if keys.chosen not in columns and all(c in columns for c in _HELPSTEER3):
        return TWO_RESPONSES
    if keys.chosen not in columns and "helpfulness" in columns and ("response" in columns or "responses" in columns):
        raise PreferenceDataError(f"{part.label} holds rated responses (HelpSteer2's layout), not pairs; the helpsteer2 "
                                  "recipe pairs them per attribute: micro data preview helpsteer2 --path FILE_OR_FOLDER")
    for column in ("chosen", "rejected"):
        if getattr(keys, column) not in columns:
            raise missing_column(getattr(keys, column), columns, part.label, f"{column}-key")
    first = next((r for r in part.records if not is_missing(r.get(keys.chosen))), part.records[0])
    conversational = as_messages(first.get(keys.chosen)) is not None
    if keys.prompt not in columns:
        if keys.prompt != ColumnKeys.prompt or closest(keys.prompt, columns, cutoff=0.8) is not None:
            raise missing_column(keys.prompt, columns, part.label, "prompt-key")
        if conversational:
            return CONVERSATIONAL_IMPLICIT
        return TRANSCRIPTS if is_transcript(first.get(keys.chosen)) else STANDARD_IMPLICIT
    if conversational:
        return CONVERSATIONAL_EXPLICIT if as_messages(first.get(keys.prompt)) is not None else PROMPT_AND_CONVERSATIONS
    return STANDARD_EXPLICIT


def table_from_parts(parts: list[Part], keys: ColumnKeys | None = None, *, source: str, strict: bool = True,
                     default_split: str | None = None, attribute_of: Callable[[Part], str | None] | None = None,
                     warnings: list[str] | None = None) -> pd.DataFrame:
    """Map every split with the same column mapping and validate them together into one table; the format
    found for each split goes into df.attrs["formats"] ({split label: format})."""
    keys, defaults, warnings = keys or ColumnKeys(), ColumnKeys(), list(warnings or [])
    formats: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    failed, first_failure = 0, None
    for part in parts:
        fmt = formats[part.label] = detect_format(part, keys)
        attribute_key = _optional_key(part, "attribute", keys.attribute, defaults.attribute, warnings)
        if attribute_key is None and keys.attribute == defaults.attribute and USER_KEY in part.columns:
            attribute_key = USER_KEY  # the annotator's id is the attribute
        # HelpSteer3's 'context' column is the conversation (the prompt), not the table's context
        context_key = (None if fmt == TWO_RESPONSES and keys.context == defaults.context
                       else _optional_key(part, "context", keys.context, defaults.context, warnings))
        split_key = _optional_key(part, "split", keys.split, defaults.split, warnings)
        attribute, ties = attribute_of(part) if attribute_of else None, 0
        for row, record in enumerate(part.records, start=1):
            pair = _helpsteer3(record) if fmt == TWO_RESPONSES else (
                record.get(keys.prompt), record.get(keys.chosen), record.get(keys.rejected))
            if pair is None:
                ties += 1
                continue
            try:
                prompt, chosen, rejected = split_pair(*pair)
            except ValueError as exc:
                if strict:  # build_table reports it with every other bad row
                    records.append({WHERE: part.where(row), PROBLEM: ("a prompt that cannot be split off", f"{part.where(row)}: {exc}")})
                    continue
                failed, first_failure = failed + 1, first_failure or f"{part.where(row)}: {exc}"
                continue
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                            "attribute": record.get(attribute_key) if attribute_key else attribute,
                            "context": record.get(context_key) if context_key else None,
                            "split": record.get(split_key) if split_key else default_split or part.split,
                            WHERE: part.where(row)})
        if ties:
            warnings.append(f"dropped {ties} tie{'s' if ties != 1 else ''} (overall_preference 0) in {part.label}")
    if failed:
        warnings.append(f"dropped {failed} pair{'s' if failed != 1 else ''} whose prompt could not be split off "
                        f"(first: {first_failure})")
    table = build_table(records, source=source, strict=strict, column_names=asdict(keys), warnings=warnings)
    table.attrs["formats"] = formats
    return table
