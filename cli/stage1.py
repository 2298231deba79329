"""`micro fit-mixture` and `micro simulate`."""

from __future__ import annotations

import typer

from ._app import app, fail

# ---- stage-1 commands (fit-mixture, simulate) ----
@app.command("fit-mixture")
def fit_mixture_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) from `micro embed` or `micro simulate`"),
    out: str = typer.Option(..., "--out", help="run directory to write (model.safetensors, config.json, metrics.json)"),
    method: str = typer.Option(None, help="micro | single | static | ensemble  [default: micro]"),
    k: int = typer.Option(None, help="number of heads  [default: 10]"),
    alpha: float = typer.Option(None, help="weight of the router regulariser (eq. 5)  [default: 0.5]"),
    router: str = typer.Option(None, help="mlp | linear  [default: mlp]"),
    hidden: int = typer.Option(None, help="MLP router width  [default: 128]"),
    epochs: int = typer.Option(None, help="a fixed number of passes over the train pairs, no early stopping  [default: train until the held-out NLL stops improving]"),
    restarts: int = typer.Option(None, help="initialisations tried side by side, the best by held-out NLL kept  [default: 4]"),
    patience: int = typer.Option(None, help="held-out evaluations without improvement before the fit stops  [default: 5]"),
    max_steps: int = typer.Option(None, "--max-steps", help="at most max(this, 4 epochs) steps  [default: 20000]"),
    lr: float = typer.Option(None, help="peak AdamW learning rate  [default: 2e-3]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per step  [default: 32]"),
    seed: int = typer.Option(None, help="random seed  [default: 0]"),
    device: str = typer.Option(None, help="cpu | cuda  [default: cpu]"),
    router_input: str = typer.Option(None, "--router-input", help="auto | prompt | context  [default: auto = context when every pair has one]"),
    balance: str = typer.Option(None, help="batch (batch-mean balance) | example (eq. 4)  [default: batch]"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage 1: --router-input prompt --balance example"),
    eval_split: str = typer.Option("test", "--eval-split", help="split to evaluate on"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines on stderr"),
) -> None:
    """Stage 1: fit K BT heads + router on a cache and print per-head accuracy per attribute.

    Defaults live in micro.heads.MixtureConfig; flags given here override them."""
    from ..embedcache.store import CacheError
    from ..heads import MixtureConfig, run_fit_mixture
    from ..heads.report import print_report

    given = dict(method=method, k=k, alpha=alpha, router=router, hidden=hidden, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, device=device, router_input=router_input, balance=balance,
                 restarts=restarts, patience=patience, max_steps=max_steps)
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        config = MixtureConfig.paper(**overrides) if paper else MixtureConfig(**overrides)
        metrics = run_fit_mixture(cache, out, config, eval_split=eval_split, log=None if quiet else _progress)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    print_report(metrics)


def _progress(entry: dict) -> None:
    """One stderr line per held-out evaluation (or epoch, with --epochs)."""
    line = f"step {entry['step']:>6} (epoch {entry['epoch']:.2f})  train loss {entry['loss']:.4f}"
    if entry.get("heldout_nll") is not None:
        line += f"  held-out NLL {entry['heldout_nll']:.4f}  best {entry['best_nll']:.4f} @ {entry['best_step']}"
        line += f"  lr {entry['lr']:.1e}" + (f"  ({entry['restarts']} restarts)" if entry.get("restarts", 1) > 1 else "")
    typer.echo(line + f"  {entry['seconds']:.1f} s", err=True)


@app.command("simulate")
def simulate_cmd(
    out: str = typer.Option(..., "--out", help="cache file to write (.h5)"),
    groups: int = typer.Option(3, help="planted annotator groups"),
    dim: int = typer.Option(64, help="embedding dimension"),
    pairs: int = typer.Option(6000, help="labeled pairs in all"),
    seed: int = typer.Option(0, help="random seed"),
    regime: str = typer.Option("prompt", help="prompt (the prompt hints at the group: the paper's setting) | shared (the same pairs labelled by every group, conflicting, independent of the prompt)"),
    conflict: float = typer.Option(None, help="fraction of the groups' mean direction removed (0..1)  [default: 1 for shared, 0 for prompt]"),
) -> None:
    """Write a cache from a planted mixture of BT models (truth stored in the file) to test stage 1 on."""
    from ..heads.simulate import bayes_accuracy, simulate

    try:
        truth = simulate(out, groups=groups, dim=dim, pairs=pairs, seed=seed, regime=regime, conflict=conflict)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(
        f"wrote {out}: {len(truth.pair_group)} pairs, {groups} groups, dim {dim}, regime {regime}; "
        f"Bayes accuracy with context {bayes_accuracy(truth, with_context=True):.3f}, "
        f"prompt only {bayes_accuracy(truth, with_context=False):.3f}"
    )


# ---- end stage-1 commands ----

