"""`micro fit-mixture` and `micro simulate`."""

from __future__ import annotations

import typer

from ..heads.config import MixtureConfig
from ._app import app, fail
from ..outputs import error_line
from ._common import OverwriteOpt, option_error
from ._options import config_options

# ---- stage-1 commands (fit-mixture, simulate) ----
@app.command("fit-mixture")
@config_options(MixtureConfig)
def fit_mixture_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) from `micro embed` or `micro simulate`"),
    out: str = typer.Option(..., "--out", help="run directory to write (model.safetensors, config.json, metrics.json)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage 1 (docs/defaults-vs-paper.md): --router-input prompt --balance example"),
    eval_split: str = typer.Option("test", "--eval-split", help="split to evaluate on"),
    overwrite: OverwriteOpt = False,
    overrides: dict = None,
) -> None:
    """Stage 1: fit K BT heads + router on a cache and print per-head accuracy per attribute.

    Every option below is a field of micro.heads.MixtureConfig (its one default is shown); --config FILE
    sets fields from JSON/YAML and flags override the file."""
    from ..embedcache.store import CacheError
    from ..heads import run_fit_mixture
    from ..heads.report import print_report

    try:
        config = MixtureConfig.paper(**overrides) if paper else MixtureConfig(**overrides)
    except ValueError as exc:
        fail(option_error(exc, MixtureConfig))
    try:
        metrics = run_fit_mixture(cache, out, config, eval_split=eval_split, overwrite=overwrite)
    except (CacheError, ValueError, OSError) as exc:
        fail(error_line(exc, out))
    print_report(metrics)


@app.command("simulate")
def simulate_cmd(
    out: str = typer.Option(..., "--out", help="cache file to write (.h5)"),
    groups: int = typer.Option(3, help="planted annotator groups"),
    dim: int = typer.Option(64, help="embedding dimension"),
    pairs: int = typer.Option(6000, help="labeled pairs in all"),
    seed: int = typer.Option(0, help="random seed"),
    regime: str = typer.Option("prompt", help="prompt (the prompt hints at the group: the paper's setting) | shared (the same pairs labelled by every group, conflicting, independent of the prompt)"),
    conflict: float = typer.Option(None, help="fraction of the groups' mean direction removed (0..1)  [default: 1 for shared, 0 for prompt]"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a cache from a planted mixture of BT models (truth stored in the file) to test stage 1 on."""
    from ..heads.planted import bayes_accuracy, simulate

    try:
        truth = simulate(out, groups=groups, dim=dim, pairs=pairs, seed=seed, regime=regime, conflict=conflict, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        fail(error_line(exc, out))
    typer.echo(
        f"wrote {out}: {len(truth.pair_group)} pairs, {groups} groups, dim {dim}, regime {regime}; "
        f"Bayes accuracy with context {bayes_accuracy(truth, with_context=True):.3f}, "
        f"prompt only {bayes_accuracy(truth, with_context=False):.3f}"
    )


# ---- end stage-1 commands ----

