"""`micro fit-mixture` and `micro simulate`."""

from __future__ import annotations

import typer

from ..heads.config import EVAL_SPLIT, MixtureConfig, SimulateConfig
from ._app import app, fail
from ..outputs import error_line
from ._common import OverwriteOpt, option_error
from ._options import config_options

# ---- stage-1 commands (fit-mixture, simulate) ----
@app.command("fit-mixture")
@config_options(MixtureConfig, exclude=("ensemble_prior",))
def fit_mixture_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) from `micro embed` or `micro simulate`"),
    out: str = typer.Option(..., "--out", help="run directory to write (model.safetensors, config.json, metrics.json)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage 1 (docs/defaults-vs-paper.md): --router-input prompt --balance example, the paper's ensemble, K of the cache's dataset (5 HelpSteer2, 10 RPR)"),
    paper_dataset: str = typer.Option(None, "--paper-dataset", help="with --paper: use this dataset's preset (helpsteer2 | rpr | preference-700k | cross-dataset | other)"),
    with_baselines: bool = typer.Option(False, "--with-baselines", help="also fit single, static and ensemble under OUT/baselines/ and record them for `micro adapt`"),
    merge_heads: float = typer.Option(None, "--merge-heads", help="merge heads whose margins' cosine on the evaluation pairs exceeds this (appendix C.3); reported in metrics.json"),
    eval_split: str = typer.Option(EVAL_SPLIT, "--eval-split", help="split to evaluate on (without it in the cache: 10 % of the train prompts)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines on stderr"),
    overwrite: OverwriteOpt = False,
    overrides: dict = None,
) -> None:
    """Stage 1: fit K BT heads + router on a cache and print per-head accuracy per attribute.

    Every option below is a field of micro.heads.MixtureConfig (its one default is shown); --config FILE
    sets fields from JSON/YAML and flags override the file."""
    from pathlib import Path

    from ..embedcache.store import CacheError
    from ..heads import run_fit_mixture
    from ..heads.baseline_runs import fit_baseline_runs
    from ..heads.merge import merge_run
    from ..heads.report import print_report

    try:
        if paper_dataset is not None and not paper:
            raise ValueError("--paper-dataset chooses a --paper preset: give --paper too")
        config = paper_mixture_config(cache, paper_dataset, overrides) if paper else MixtureConfig(**overrides)
    except (CacheError, ValueError) as exc:
        fail(option_error(exc, MixtureConfig))
    try:
        metrics = run_fit_mixture(cache, out, config, eval_split=eval_split, overwrite=overwrite,
                                  log=None if quiet else _progress)
        if merge_heads is not None:
            metrics["merge"] = merge_run(cache, out, merge_heads)
        if with_baselines:
            fit_baseline_runs(cache, out, config, eval_split=eval_split)
            metrics["files"]["baselines"] = str(Path(out) / "baselines")
    except (CacheError, ValueError, OSError) as exc:
        fail(error_line(exc, out))
    print_report(metrics)


def paper_mixture_config(cache: str, dataset: str | None, overrides: dict):
    """MixtureConfig.paper with the K of the cache's dataset (flags win), after printing what was chosen."""
    from .. import paper
    from ..embedcache.store import read_meta
    from ..heads import MixtureConfig

    preset, note = paper.stage1_overrides(read_meta(cache), dataset)
    typer.echo(f"note: {note}", err=True)
    return MixtureConfig.paper(**{**preset, **overrides})


def _progress(entry: dict) -> None:
    """One stderr line per held-out evaluation (or epoch, with --epochs)."""
    line = ((f"alpha {entry['alpha']:g}  " if "alpha" in entry else "") + (f"fold {entry['fold']}/{entry['folds']}  " if "fold" in entry else "")) + f"step {entry['step']:>6} (epoch {entry['epoch']:.2f})  train loss {entry['loss']:.4f}"
    if entry.get("heldout_nll") is not None:
        line += f"  held-out NLL {entry['heldout_nll']:.4f}  best {entry['best_nll']:.4f} @ {entry['best_step']}"
        line += f"  lr {entry['lr']:.1e}" + (f"  ({entry['restarts']} restarts)" if entry.get("restarts", 1) > 1 else "")
    typer.echo(line + f"  {entry['seconds']:.1f} s", err=True)


@app.command("simulate")
@config_options(SimulateConfig)
def simulate_cmd(
    out: str = typer.Option(..., "--out", help="cache file to write (.h5)"),
    overwrite: OverwriteOpt = False,
    overrides: dict = None,
) -> None:
    """Write a cache from a planted mixture of BT models (truth stored in the file) to test stage 1 on.

    Every option below is a field of micro.heads.config.SimulateConfig (its one default is shown); --config
    FILE sets fields from JSON/YAML and flags override the file."""
    from ..heads.planted import bayes_accuracy, simulate

    try:
        config = SimulateConfig(**overrides)
    except ValueError as exc:
        fail(option_error(exc, SimulateConfig))
    try:
        truth = simulate(out, config, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        fail(error_line(exc, out))
    p = truth.params
    extras = (f", spread {p['spread']}" if p.get("spread") else "") + (", no contexts" if not p.get("contexts", True) else "")
    typer.echo(
        f"wrote {out}: {len(truth.pair_group)} pairs, {p['groups']} groups, dim {p['dim']}, regime {p['regime']}{extras}; "
        f"Bayes accuracy with context {bayes_accuracy(truth, with_context=True):.3f}, "
        f"prompt only {bayes_accuracy(truth, with_context=False):.3f}"
    )


# ---- end stage-1 commands ----

