"""`micro adapt`."""

from __future__ import annotations

import typer

from ._app import app, fail

# ---- stage-2 commands (adapt) ----
@app.command("adapt")
def adapt_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) with contexts: budget pairs are drawn from its train split"),
    run_dir: str = typer.Argument(..., help="stage-1 `micro fit-mixture --method micro` run directory"),
    out: str = typer.Option(..., "--out", help="output directory (results.json/csv, table.md, budget_curve.png, routers/)"),
    budget: int = typer.Option(None, "--budget", help="labelled context pairs per attribute (default 50)"),
    budgets: str = typer.Option(None, "--budgets", help="comma-separated budgets for a sweep, e.g. 10,25,50,100,150"),
    seeds: int = typer.Option(None, "--seeds", help="independent repetitions (mean ± std)  [default: 5]"),
    seed: int = typer.Option(None, "--seed", help="first seed  [default: 0]"),
    tau: float = typer.Option(None, "--tau", help="Hedge temperature of eq. 6  [default: 1.0; --paper: 1e-3]"),
    epochs: int = typer.Option(None, "--epochs", help="router epochs (soft labels recomputed each epoch)  [default: 10]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per router step  [default: 32]"),
    lr: float = typer.Option(None, "--lr", help="router AdamW learning rate  [default: 2e-3]"),
    hyre_shots: int = typer.Option(None, "--hyre-shots", help="labelled test pairs per attribute for HyRe / MiCRo-HyRe  [default: 16]"),
    hyre_variant: str = typer.Option(None, "--hyre-variant", help="posterior | best  [default: posterior]"),
    eval_cache: str = typer.Option(None, "--eval-cache", help="evaluate on this cache's test split (same backbone)"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="skip the stage-1 baseline fits (single, static, ensemble, hyre)"),
    baselines: list[str] = typer.Option(None, "--baselines", help="stage-1 baseline run dirs (fit-mixture --method single|static|ensemble); repeat the flag or separate with commas  [default: the run's record, else fitted on its stage-1 data]"),
    head_input: str = typer.Option(None, "--head-input", help="response | context | auto: what the heads score (context = the cache's (context + prompt, response) embeddings)  [default: response; --paper: auto]"),
    device: str = typer.Option(None, help="cpu | cuda  [default: cpu]"),
    paper: bool = typer.Option(False, "--paper", help="the paper's stage 2: tau of the cache's dataset (1e-3 HelpSteer2 / cross-dataset, 1e-4 RPR), --head-input auto"),
    paper_dataset: str = typer.Option(None, "--paper-dataset", help="with --paper: use this dataset's preset (helpsteer2 | rpr | preference-700k | cross-dataset | other)"),
    as_json: bool = typer.Option(False, "--json", help="print results.json's summary as JSON instead of the table"),
) -> None:
    """Stage 2: adapt the stage-1 router to user contexts (Hedge soft labels, paper eq. 6 / Algorithm 1)
    over budgets x seeds, and score it beside the baselines on the same test pairs."""
    import json

    from ..embedcache.store import CacheError
    from ..router import AdaptConfig, run_adapt
    from ..router.presets import paper_adapt_config
    from ..router.report import table_rows

    try:
        if budget is not None and budgets is not None:
            raise ValueError("give --budget or --budgets, not both")
        values = [int(b) for b in budgets.split(",") if b.strip()] if budgets else ([budget] if budget is not None else None)
        if paper_dataset is not None and not paper:
            raise ValueError("--paper-dataset chooses a --paper preset: give --paper too")
        runs = [p.strip() for item in baselines or [] for p in item.split(",") if p.strip()]
        given = dict(budgets=values, seeds=seeds, seed=seed, tau=tau, epochs=epochs, batch_size=batch_size, lr=lr,
                     hyre_shots=hyre_shots, hyre_variant=hyre_variant, eval_cache=eval_cache, device=device,
                     head_input=head_input, baseline_runs=runs or None)
        overrides = {name: value for name, value in given.items() if value is not None}
        overrides["baselines"] = not no_baselines
        if paper:
            config, note = paper_adapt_config(cache, run_dir, dataset=paper_dataset, **overrides)
            typer.echo(f"note: {note}", err=True)
        else:
            config = AdaptConfig(**overrides)
        results = run_adapt(cache, run_dir, out, config, log=lambda msg: typer.echo(msg, err=True))
    except (CacheError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps({"summary": results["summary"], "files": results["files"]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Stage-2 accuracy on {results['eval_cache']} (mean ± std over {config.seeds} seeds)")
    table.add_column("Method")
    for name in results["attributes"] + ["Average"]:
        table.add_column(name, justify="right")
    for label, cells in table_rows(results):
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    for note in results["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False)
    for name, path in results["files"].items():
        console.print(f"{name}: {path}", markup=False)
# ---- end stage-2 commands ----

