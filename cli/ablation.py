"""`micro sweep-k`: the K ablation (paper Figures 5-6) in one command."""

from __future__ import annotations

import typer

from ..heads.config import MixtureConfig
from ..router.config import AdaptConfig
from ._app import app, fail


@app.command("sweep-k")
def sweep_k_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5)"),
    out: str = typer.Option(..., "--out", help="output folder (k<K>/ runs, k_ablation.csv/md/png; with --budgets adapt_k<K>/, k_budget.png)"),
    k: str = typer.Option("1,3,5,10,20", "--k", help="comma-separated numbers of heads"),
    budgets: str = typer.Option(None, "--budgets", help="also adapt each K's run over these budgets (Figure 6), e.g. 10,25,50"),
    seeds: int = typer.Option(None, "--seeds", help=f"stage-2 repetitions with --budgets  \\[default: AdaptConfig's {AdaptConfig.seeds}]"),
    epochs: int = typer.Option(None, help=f"stage-1 passes over the train pairs (None: until the held-out NLL stops improving)  \\[default: MixtureConfig's {MixtureConfig.epochs}]"),
    seed: int = typer.Option(None, help=f"stage-1 seed  \\[default: MixtureConfig's {MixtureConfig.seed}]"),
    paper: bool = typer.Option(False, "--paper", help="the paper's stage 1 and stage 2 (tau of the cache's dataset)"),
    paper_dataset: str = typer.Option(None, "--paper-dataset", help="with --paper: use this dataset's preset"),
) -> None:
    """Fit stage 1 at each K on one loaded cache and tabulate the best head per attribute (Figure 5);
    with --budgets, adapt each K's run too and plot accuracy vs budget per K (Figure 6)."""
    from .. import paper as presets
    from ..embedcache.store import CacheError, read_meta
    from ..heads.ablation import sweep_k
    from ..router.k_ablation import adapt_k_runs

    log = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        if paper_dataset is not None and not paper:
            raise ValueError("--paper-dataset chooses a --paper preset: give --paper too")
        ks = [int(v) for v in k.split(",") if v.strip()]
        overrides = {n: v for n, v in dict(epochs=epochs, seed=seed).items() if v is not None}
        config = MixtureConfig.paper(**overrides) if paper else MixtureConfig(**overrides)
        results = sweep_k(cache, out, ks, config, log=log)
        typer.echo(open(results["files"]["table"]).read())
        if budgets:
            stage2 = {"budgets": [int(b) for b in budgets.split(",") if b.strip()], **({"seeds": seeds} if seeds else {})}
            if paper:
                _, chosen, note = presets.choose(read_meta(cache), paper_dataset)
                log(f"note: {note}")
                acfg = AdaptConfig.paper(tau=chosen.tau, **stage2)
            else:
                acfg = AdaptConfig(**stage2)
            curves = adapt_k_runs(cache, {int(k): r for k, r in results["runs"].items()}, out, acfg, log=log)
            results["files"].update({f"k_budget_{n}": p for n, p in curves["files"].items()})
    except (CacheError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    for name, path in results["files"].items():
        typer.echo(f"{name}: {path}")
