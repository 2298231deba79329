"""`micro demo`."""

from __future__ import annotations

import typer

from ._app import app

# ---- demo command ----
@app.command("demo")
def demo_cmd(
    out: str = typer.Option("micro-demo", "--out", help="folder for the cache, runs, results and report.md / report.html"),
    budgets: str = typer.Option("1,5,10,25,50", "--budgets", help="stage-2 labelled pairs per group, comma-separated"),
    seeds: int = typer.Option(3, "--seeds", help="stage-2 repetitions (mean ± std)"),
    n_prompts: int = typer.Option(None, "--n-prompts", help="cut the demo data to this many prompts (quick look)"),
    model: str = typer.Option("minilm", "--model", help="backbone to embed with (default: the packaged MiniLM, offline)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage-1 and stage-2 configuration"),
) -> None:
    """Run the whole pipeline offline on the built-in demo data: embed -> fit-mixture -> adapt -> report."""
    from rich.console import Console
    from rich.table import Table

    from ..demo import DemoConfig, run_demo
    from ..demo.report import HEADLINE, headline_rows

    config = DemoConfig(out=out, model=model, n_prompts=n_prompts, seeds=seeds, paper=paper,
                        budgets=[int(b) for b in budgets.split(",") if b.strip()])
    summary = run_demo(config, log=lambda msg: typer.echo(msg, err=True))
    header, rows, budget = headline_rows(summary, short=True)
    console = Console()
    width = 4 + max(len(r[0]) for r in rows) + sum(3 + max(len(h), 11) for h in header[1:])
    if console.width < width:  # a narrow terminal: means only, so no cell is cut
        rows = [[r[0]] + [c.split("±")[0] for c in r[1:]] for r in rows]
    title = f"Demo: test accuracy per user group, {budget} labelled pairs per group, {seeds} seeds"
    table = Table(title=title + (" (mean ± std)" if console.width >= width else " (mean; ± std in report.md)"))
    table.add_column(header[0], no_wrap=True, min_width=max(len(r[0]) for r in rows))
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("methods: " + "; ".join(f"{m}: {label}" for m, label in HEADLINE), markup=False)
    zero = summary.get("zero_label") or {}
    if zero.get("micro"):
        console.print(f"zero labels (each group left out of stage 1, routed by its context): micro {zero['micro']['Average']:.3f}, "
                      f"single head {zero['single']['Average']:.3f} (average over groups)", markup=False)
    console.print(f"timings: {summary['timings_s']}", markup=False)
    for kind, path in summary["report"].items():
        console.print(f"report ({kind}): {path}", markup=False)
# ---- end demo command ----


