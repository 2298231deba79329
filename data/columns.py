"""The column names a preference source is read by (the --*-key options): one place for their defaults,
importing nothing, so the CLI shows them without loading pandas."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
        return {k: v for k, v in asdict(self).items() if v != getattr(ColumnKeys, k)}


#: A source without an `attribute` column whose pairs name their annotator in this column: it is the
#: attribute (the user id; docs/users.md).
USER_KEY = "user"

#: Columns of prompt + response rows (`micro score`): the response, and each row's id.
RESPONSE_KEY = "response"
ID_KEY = "id"
