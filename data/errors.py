"""The one exception the data layer raises, and the helpers that word its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PreferenceDataError(ValueError):
    """Bad preference data or a bad request for it. The message names the file, row and column
    involved and says how to fix it; the CLI prints it without a traceback."""


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most similar to `name` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=cutoff)
    return matches[0] if matches else None


def missing_column(column: str, available: Iterable[str], where: str, option: str | None) -> PreferenceDataError:
    """'column X not found in FILE; did you mean Y? use --x-key to map it (columns present: ...)'."""
    available = sorted(str(a) for a in available)
    msg = f"column '{column}' not found in {where}"
    guess = closest(column, available)
    if guess is not None:
        msg += f"; did you mean '{guess}'?"
    if option:
        msg += f" use --{option} to map it"
    msg += f" (columns present: {', '.join(available) or 'none'})"
    return PreferenceDataError(msg)
