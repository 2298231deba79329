"""The `micro` command. cli/ only parses options and calls the library; each module registers its commands
on the one typer app in `_app.py`."""

from __future__ import annotations

from . import ablation, adapt, compare, data, demo, embed, evaluate, stage1, use  # noqa: F401  (registers the commands)
from ._app import app


def main() -> None:
    """The `micro` entry point: any of the project's errors that a command did not report itself becomes the
    same one `error:` line and exit 2 (a bug elsewhere keeps its traceback)."""
    import sys

    try:
        app()
    except ValueError as exc:  # every project error class is a ValueError; which ones is checked lazily
        if not _is_project_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _is_project_error(exc: BaseException) -> bool:
    from ..compare import CompareError
    from ..data.errors import PreferenceDataError
    from ..embedcache.store import CacheError
    from ..heads.model import RunConfigError
    from ..outputs import OutputError
    from ..router.draws import BudgetError

    return isinstance(exc, (CompareError, PreferenceDataError, CacheError, RunConfigError, OutputError, BudgetError))
