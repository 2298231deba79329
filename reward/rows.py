"""Rows to score from any source `micro data` reads: preference pairs, or (prompt, response) rows.

Every row keeps an id: the input's id column (`id` unless told otherwise) where it has one, else the
row's 0-based position in the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import PreferenceDataError, load_preferences
from ..data.columns import ID_KEY, RESPONSE_KEY, ColumnKeys
from ..data.source import open_source
from ..data.pairs import as_messages


@dataclass
class Rows:
    """What `micro score` scores: pairs (chosen/rejected set) or responses."""

    ids: list[Any]
    prompts: list[Any]
    contexts: list[str | None]
    responses: list[str] | None = None
    chosen: list[str] | None = None
    rejected: list[str] | None = None
    attributes: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> bool:
        return self.chosen is not None

    def __len__(self) -> int:
        return len(self.ids)


def _response_records(source: str, response_key: str, chosen_key: str) -> list[tuple[str, int, dict]] | None:
    """Records of a file/folder source with a response column and no chosen column, else None."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    frames = open_source(path)
    columns = {c for f in frames for c in f.columns}
    if response_key not in columns or chosen_key in columns:
        return None
    return [(f.where(i), i, r) for f in frames for i, r in enumerate(f.records, start=1)]


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PreferenceDataError(f"{where}: column '{column}' must be non-empty text; fill it in or remove the row")
    return value


def read_rows(source: str, *, path: str | None = None, split: str | None = None, prompt_key: str = ColumnKeys.prompt,
              chosen_key: str = ColumnKeys.chosen, rejected_key: str = ColumnKeys.rejected,
              response_key: str = RESPONSE_KEY, attribute_key: str = ColumnKeys.attribute,
              context_key: str = ColumnKeys.context, split_key: str = ColumnKeys.split, id_key: str = ID_KEY,
              limit: int | None = None) -> Rows:
    """Read SOURCE as (prompt, response) rows when its files have `response_key` and no `chosen_key`,
    else as preference pairs with `load_preferences` (recipes, files, hub ids)."""
    records = _response_records(source, response_key, chosen_key) if path is None else None
    if records is not None:
        if limit is not None:
            records = records[:limit]
        ids, prompts, responses, contexts = [], [], [], []
        for n, (where, _, rec) in enumerate(records):
            if prompt_key not in rec:
                raise PreferenceDataError(f"{where}: no column '{prompt_key}'; map the prompt column with --prompt-key")
            messages = as_messages(rec[prompt_key])
            prompts.append(messages if messages is not None else _text(rec[prompt_key], prompt_key, where))
            responses.append(_text(rec.get(response_key), response_key, where))
            ctx = rec.get(context_key)
            contexts.append(ctx if isinstance(ctx, str) and ctx.strip() else None)
            ids.append(rec[id_key] if id_key in rec else n)
        return Rows(ids=ids, prompts=prompts, contexts=contexts, responses=responses)
    table = load_preferences(source, path=path, split=split, prompt_key=prompt_key, chosen_key=chosen_key,
                             rejected_key=rejected_key, attribute_key=attribute_key, context_key=context_key,
                             split_key=split_key, limit=limit)
    ids: list[Any] = list(range(len(table)))
    notes = list(table.attrs.get("warnings", []))
    local = Path(source).expanduser()
    if local.exists() and split is None and limit is None:
        raw = [r for f in open_source(local) for r in f.records]
        if len(raw) == len(table) and all(id_key in r for r in raw):
            ids = [r[id_key] for r in raw]
        elif any(id_key in r for r in raw):
            notes.append(f"ids are row positions in the loaded table: '{id_key}' could not be matched to its rows "
                         f"({len(raw)} input rows, {len(table)} pairs after dropping duplicates)")
    return Rows(ids=ids, prompts=table["prompt"].tolist(), contexts=[c if isinstance(c, str) else None for c in table["context"]],
                chosen=table["chosen"].tolist(), rejected=table["rejected"].tolist(),
                attributes=table["attribute"].tolist(), notes=notes)
