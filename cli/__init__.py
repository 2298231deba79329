"""The `micro` command. cli/ only parses options and calls the library; each module registers its commands
on the one typer app in `_app.py`."""

from __future__ import annotations

from . import ablation, adapt, data, demo, embed, stage1  # noqa: F401  (registers the commands)
from ._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
