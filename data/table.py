"""The preference table every loader produces: validation (one function for all loaders),
content hash and summary.

Columns, always all six, in this order:
  prompt    str, or a conversation: list of {"role": "user"|"assistant"|..., "content": str}
  chosen    str, the preferred response
  rejected  str, the other response
  attribute str, the preference dimension or group ("default" when the source has none)
  context   str or None, a natural-language statement of the preference (the paper's c)
  split     str ("train" when the source does not say)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pandas as pd

from .errors import PreferenceDataError
from .pairs import as_messages, is_missing

COLUMNS = ("prompt", "chosen", "rejected", "attribute", "context", "split")
DEFAULT_ATTRIBUTE = "default"
DEFAULT_SPLIT = "train"
WHERE = "_where"  # key of a record's location ("FILE row N"), used only for messages
PROBLEM = "_problem"  # key of a (kind, message) found before validation (e.g. a transcript that cannot be split)
SHOW_ROWS = 5  # rows named per kind of problem


def _describe(value: Any) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:60]}{'...' if len(text) > 60 else ''})"


class _Problem(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _text(value: Any, column: str, name: str, where: str) -> str:
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise _Problem(f"empty {column}", f"{where}: column '{name}' is empty; every pair needs a non-empty "
                       f"{column} text: fill it in or remove the row")
    if not isinstance(value, str):
        raise _Problem(f"non-text {column}", f"{where}: column '{name}' holds {_describe(value)}, not text; "
                       f"map the right column with --{column}-key or convert the value to a string")
    return str(value)


def _prompt(value: Any, name: str, where: str) -> str | list[dict[str, str]]:
    messages = as_messages(value)
    if messages is None:
        return _text(value, "prompt", name, where)
    for i, message in enumerate(messages):
        if not isinstance(message["content"], str):
            raise _Problem("non-text prompt", f"{where}: column '{name}' message {i + 1} has content "
                           f"{_describe(message['content'])}, not text; conversations need string contents")
    if not any(m["content"].strip() for m in messages):
        raise _Problem("empty prompt", f"{where}: column '{name}' is a conversation with no text; fill it in or remove the row")
    return messages


def _label(value: Any, column: str, name: str, where: str, default: str | None) -> str | None:
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise _Problem(f"non-text {column}", f"{where}: column '{name}' holds {_describe(value)}, not text; "
                   f"map the right column with --{column}-key or convert the value to a string")


def _clean(record: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    where = record.get(WHERE, "row")
    if record.get(PROBLEM):
        raise _Problem(*record[PROBLEM])
    row = {
        "prompt": _prompt(record.get("prompt"), names["prompt"], where),
        "chosen": _text(record.get("chosen"), "chosen", names["chosen"], where),
        "rejected": _text(record.get("rejected"), "rejected", names["rejected"], where),
        "attribute": _label(record.get("attribute"), "attribute", names["attribute"], where, DEFAULT_ATTRIBUTE),
        "context": _label(record.get("context"), "context", names["context"], where, None),
        "split": _label(record.get("split"), "split", names["split"], where, DEFAULT_SPLIT),
    }
    if row["chosen"] == row["rejected"]:
        raise _Problem("identical chosen and rejected", f"{where}: chosen and rejected are identical, so the pair "
                       "states no preference; remove the row or fix one side")
    return row


def _row_key(row: dict[str, Any]) -> str:
    return json.dumps([row[c] for c in COLUMNS], ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def build_table(records: Iterable[dict[str, Any]], *, source: str, strict: bool = True,
                column_names: dict[str, str] | None = None, warnings: list[str] | None = None) -> pd.DataFrame:
    """Validate records (dicts with the six columns, plus WHERE for messages) into the table.

    strict=True (files a user hands us): every bad row is found, then one PreferenceDataError reports
    them all (count per reason, the first rows of each, the first message in full). strict=False
    (built-in recipes over public data we do not control, or `--skip-invalid`): bad rows are dropped,
    counted per reason in df.attrs["invalid_rows"] and in a warning. Either way exact duplicate pairs
    (all six columns equal) are dropped, counted in df.attrs["duplicates_dropped"] and reported in
    df.attrs["warnings"].
    `column_names` maps table columns to the source's column names, for messages.
    """
    names = {c: c for c in COLUMNS} | (column_names or {})
    warnings = list(warnings or [])
    rows, seen = [], set()
    dropped: Counter[str] = Counter()
    first_bad: dict[str, str] = {}
    bad_rows: dict[str, list[str]] = {}
    duplicates, first_duplicate = 0, None
    for record in records:
        try:
            row = _clean(record, names)
        except _Problem as problem:
            dropped[problem.kind] += 1
            first_bad.setdefault(problem.kind, str(problem))
            if len(bad_rows.setdefault(problem.kind, [])) < SHOW_ROWS:
                bad_rows[problem.kind].append(str(record.get(WHERE, "?")))
            continue
        key = _row_key(row)
        if key in seen:
            duplicates += 1
            first_duplicate = first_duplicate or record.get(WHERE, "a row")
            continue
        seen.add(key)
        rows.append(row)
    if strict and dropped:
        raise PreferenceDataError(_invalid_rows_message(source, dropped, first_bad, bad_rows))
    for kind, n in dropped.items():
        warnings.append(f"dropped {n} pair{'s' if n != 1 else ''} with {kind} (first: {first_bad[kind]})")
    if duplicates:
        warnings.append(f"dropped {duplicates} duplicate pair{'s' if duplicates != 1 else ''} (same prompt, chosen, "
                        f"rejected, attribute, context and split as an earlier row; first: {first_duplicate})")
    if not rows:
        raise PreferenceDataError(f"{source} gave no usable preference pairs"
                                  + (f" ({'; '.join(warnings)})" if warnings else "; the source is empty"))
    table = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in COLUMNS})
    table.attrs.update(source=source, duplicates_dropped=duplicates, rows_dropped=sum(dropped.values()),
                       invalid_rows=dict(dropped), warnings=warnings)
    return table


def _invalid_rows_message(source: str, dropped: Counter, first_bad: dict[str, str], bad_rows: dict[str, list[str]]) -> str:
    """All bad rows in one line: the count per reason with its first rows, then the first message in full."""
    total = sum(dropped.values())
    if total == 1:
        kind = next(iter(dropped))
        return f"{first_bad[kind]} (or pass --skip-invalid to drop the row)"
    parts = []
    for kind, n in dropped.most_common():
        more = ", ..." if n > len(bad_rows[kind]) else ""
        parts.append(f"{n} with {kind} ({', '.join(bad_rows[kind])}{more}; first: {first_bad[kind]})")
    return (f"{source} has {total} invalid rows: " + "; ".join(parts)
            + ". Fix them, or pass --skip-invalid to drop them (their counts are kept in the cache metadata).")


def from_frame(frame: pd.DataFrame, *, source: str, strict: bool = True) -> pd.DataFrame:
    """Validate a DataFrame already in the six-column format (e.g. from a generator)."""
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in frame.columns]
    if missing:
        raise PreferenceDataError(f"{source} returned a table without column(s) {', '.join(missing)}; "
                                  f"a preference table needs {', '.join(COLUMNS)}")
    records = frame.to_dict("records")
    for i, record in enumerate(records, start=1):
        record[WHERE] = f"{source} row {i}"
    return build_table(records, source=source, strict=strict, warnings=frame.attrs.get("warnings"))


def table_sha256(df: pd.DataFrame) -> str:
    """A stable hash of the table's content (the six columns, row order included); caches keep it to
    know which table they were built from."""
    digest = hashlib.sha256()
    for row in df[list(COLUMNS)].itertuples(index=False, name=None):
        value = [None if is_missing(v) else v for v in row]
        digest.update(json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def render_prompt(prompt: Any) -> str:
    """A prompt as one string: conversations become 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _truncate(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def summarize(df: pd.DataFrame, *, sample_chars: int = 200) -> dict[str, Any]:
    """Counts per split and attribute, distinct prompts/responses/contexts, dropped rows, the format
    found for each split of the source, warnings,
    the table hash and a truncated first row, as a JSON-ready dict."""
    splits: dict[str, dict[str, Any]] = {}
    for split, attribute in zip(df["split"], df["attribute"]):
        entry = splits.setdefault(split, {"pairs": 0, "attributes": {}})
        entry["pairs"] += 1
        entry["attributes"][attribute] = entry["attributes"].get(attribute, 0) + 1
    prompts = {json.dumps(p, ensure_ascii=False, sort_keys=True) for p in df["prompt"]}
    responses = set(df["chosen"]) | set(df["rejected"])
    contexts = {c for c in df["context"] if not is_missing(c)}
    sample = None
    if len(df):
        first = df.iloc[0]
        sample = {"prompt": _truncate(render_prompt(first["prompt"]), sample_chars),
                  "chosen": _truncate(first["chosen"], sample_chars),
                  "rejected": _truncate(first["rejected"], sample_chars),
                  "attribute": first["attribute"],
                  "context": _truncate(None if is_missing(first["context"]) else first["context"], sample_chars),
                  "split": first["split"]}
    return {
        "source": df.attrs.get("source"),
        "pairs": int(len(df)),
        "splits": splits,
        "distinct_prompts": len(prompts),
        "distinct_responses": len(responses),
        "distinct_contexts": len(contexts),
        "users": not contexts and len(set(df["attribute"].dropna())) > 1,
        "duplicates_dropped": int(df.attrs.get("duplicates_dropped", 0)),
        "rows_dropped": int(df.attrs.get("rows_dropped", 0)),
        "formats": dict(df.attrs.get("formats", {})),
        "warnings": list(df.attrs.get("warnings", [])),
        "sha256": table_sha256(df),
        "sample": sample,
    }
