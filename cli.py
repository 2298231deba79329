"""The `micro` command: typer commands only. Each command parses, calls the library, prints."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="micro",
    help="Personalized reward modeling (MiCRo): embed once, then fit mixtures and adapt routers in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- data commands (micro data ...) ----
# ---- end data commands ----

# ---- embed commands ----
# ---- end embed commands ----

# ---- stage-1 commands (fit-mixture, simulate) ----
# ---- end stage-1 commands ----

# ---- stage-2 commands (adapt) ----
# ---- end stage-2 commands ----

# ---- demo command ----
# ---- end demo command ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
