"""`micro demo`."""

from __future__ import annotations

import typer

from ..demo.config import DemoConfig
from ._app import app, fail
from ._options import config_options

# ---- demo command ----
@app.command("demo")
@config_options(DemoConfig)
def demo_cmd(overrides: dict = None) -> None:
    """Run the whole pipeline offline on the built-in demo data: embed -> fit-mixture -> adapt -> report.

    Every option is a field of micro.demo.DemoConfig (its one default is shown)."""
    from ..demo import run_demo
    from ..demo.report import print_headline

    try:
        config = DemoConfig(**overrides)
    except (TypeError, ValueError) as exc:
        fail(exc)
    summary = run_demo(config, log=lambda msg: typer.echo(msg, err=True))
    print_headline(summary, config.seeds)
# ---- end demo command ----


