"""`micro sweep-k`: the K ablation (paper Figures 5-6) in one command."""

from __future__ import annotations

import typer

from ..router.config import KAblationConfig
from ._app import app, fail
from ._common import option_error
from ._options import config_options


@app.command("sweep-k")
@config_options(KAblationConfig)
def sweep_k_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5)"),
    out: str = typer.Option(..., "--out", help="output folder (k<K>/ runs, k_ablation.csv/md/png, sweep_k_config.json; with --budgets adapt_k<K>/, k_budget.png)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's stage 1 and stage 2 (tau of the cache's dataset)"),
    paper_dataset: str = typer.Option(None, "--paper-dataset", help="with --paper: use this dataset's preset"),
    overrides: dict = None,
) -> None:
    """Fit stage 1 at each K on one loaded cache and tabulate the best head per attribute (Figure 5);
    with --budgets, adapt each K's run too and plot accuracy vs budget per K (Figure 6).

    Every option below is a field of micro.router.config.KAblationConfig (its one default is shown); --config
    FILE sets fields from JSON/YAML and flags override the file."""
    from .. import paper as presets
    from ..embedcache.handle import Cache
    from ..embedcache.store import CacheError
    from ..heads.ablation import sweep_k
    from ..outputs import lock
    from ..router.k_ablation import adapt_k_runs, save_k_config

    log = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        config = KAblationConfig(**overrides)
    except ValueError as exc:
        fail(option_error(exc, KAblationConfig))
    try:
        with lock(out, "sweep-k folder"):  # one sweep per folder at a time
            if paper_dataset is not None and not paper:
                raise ValueError("--paper-dataset chooses a --paper preset: give --paper too")
            stage1 = config.stage1(paper=paper)
            handle = Cache(cache)  # opened once: every step below reads this handle
            results = sweep_k(handle, out, config.k, stage1, log=log)
            typer.echo(open(results["files"]["table"]).read())
            stage2 = None
            if config.budgets:
                tau = None
                if paper:
                    _, chosen, note = presets.choose(handle.meta, paper_dataset)
                    log(f"note: {note}")
                    tau = chosen.tau
                stage2 = config.stage2(paper_tau=tau)
                curves = adapt_k_runs(handle, {int(k): r for k, r in results["runs"].items()}, out, stage2, log=log)
                results["files"].update({f"k_budget_{n}": p for n, p in curves["files"].items()})
            results["files"]["config"] = save_k_config(out, config, stage1, stage2, cache=str(cache), paper=paper,
                                                       paper_dataset=paper_dataset)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    for name, path in results["files"].items():
        typer.echo(f"{name}: {path}")
