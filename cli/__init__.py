"""The `micro` command. cli/ only parses options and calls the library; each module registers its commands
on the one typer app in `_app.py`."""

from __future__ import annotations

from . import ablation, adapt, compare, data, demo, embed, evaluate, stage1, use  # noqa: F401  (registers the commands)
from ._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
