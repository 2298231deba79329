"""The typer application every command module registers on, and the one error exit."""

from __future__ import annotations

from typing import NoReturn

import typer

app = typer.Typer(
    name="micro",
    help="Personalized reward modeling (MiCRo): embed once, then fit mixtures and adapt routers in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: object) -> NoReturn:
    """Print one `error: ...` line on stderr and exit 2 (the exit code of every refused input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"micro {version('micro')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            from .. import __version__

            typer.echo(f"micro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print micro's version and exit."),
) -> None:
    """Personalized reward modeling (MiCRo): embed once, then fit mixtures and adapt routers in seconds."""
