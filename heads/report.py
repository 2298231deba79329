"""Human-readable stage-1 results (rich tables): what `micro fit-mixture` prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def head_table(metrics: dict[str, Any]) -> Table:
    """Per-head x per-attribute accuracy (paper Tables 7/8), best head per attribute in bold."""
    per = metrics["test"]["per_attribute"]
    attrs = list(per)
    table = Table(title=f"{metrics['method']} heads on {metrics.get('eval_split', 'test')} (accuracy)")
    table.add_column("head")
    for a in attrs:
        table.add_column(a, justify="right")
    for k in range(metrics["k"]):
        cells = []
        for a in attrs:
            acc = per[a]["head_accuracy"][k]
            cells.append(f"[bold]{acc:.4f}[/bold]" if per[a]["best_head"] == k else f"{acc:.4f}")
        table.add_row(f"head {k + 1}", *cells)
    table.add_row("routed", *[f"{per[a]['routed_accuracy']:.4f}" for a in attrs], style="cyan")
    table.add_row("pairs", *[str(per[a]["pairs"]) for a in attrs], style="dim")
    return table


def best_head_table(metrics: dict[str, Any]) -> Table:
    """Figure 2 as a table: the best head per attribute and the routed accuracy, with averages."""
    per, avg = metrics["test"]["per_attribute"], metrics["test"]["average"]
    table = Table(title="best head per attribute (Figure 2)")
    for col in ("attribute", "best head", "best accuracy", "routed accuracy"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for a, v in per.items():
        table.add_row(a, str(v["best_head"] + 1), f"{v['best_accuracy']:.4f}", f"{v['routed_accuracy']:.4f}")
    table.add_row("average", "", f"{avg['best_accuracy']:.4f}", f"{avg['routed_accuracy']:.4f}", style="bold")
    return table


def alpha_phrase(fit: dict, values: str) -> str:
    """The router regulariser's weight chosen among `alpha_alternatives` ('' without alternatives)."""
    if len(fit.get("alpha_nll") or []) < 2:
        return ""
    ahead = f"; the best alternative {fit['alpha_z']:.2f} SE ahead" if fit.get("alpha_z") is not None else ""
    return f"; router regulariser alpha {fit['alpha']:g} kept ({values} " + ", ".join(f"{v:.4f}" for v in fit["alpha_nll"]) + ahead + ")"


def print_report(metrics: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(head_table(metrics))
    console.print(best_head_table(metrics))
    entropy = metrics["router_entropy"]
    console.print(
        f"router entropy {'n/a' if entropy is None else f'{entropy:.3f}'} (1.0 = uniform) | "
        f"head agreement {metrics['head_agreement']:.3f} | {metrics['train_steps']} steps in {metrics['train_seconds']:.1f} s "
        f"on {metrics['train_pairs']} pairs"
    )
    fit = metrics.get("fit") or {}
    if fit.get("schedule") == "early-stopping" and fit.get("folds"):
        console.print(
            f"early stopping by {fit['folds']}-fold cross-validation over prompts (every training pair held out once): "
            f"best steps {fit['fold_best_steps']} ({fit['stop_reason']}), held-out NLL {fit['best_heldout_nll']:.4f}"
            + (f"; start {fit['chosen_restart'] + 1} of {fit['restarts']} kept (head scale {fit['head_init']:g}"
               + (f", {fit['start_z']:.2f} SE ahead of the first scale" if fit.get("start_z") is not None else "") + ")" if fit["restarts"] > 1 else "")
            + alpha_phrase(fit, "pooled held-out values")
            + f"; refitted on all {metrics['train_pairs']} pairs for {fit['refit_steps']} steps"
        )
    elif fit.get("schedule") == "early-stopping":
        console.print(
            f"early stopping: {fit['steps']} steps ({fit['stop_reason']}), kept step {fit['best_step']} with held-out NLL "
            f"{fit['best_heldout_nll']:.4f} on {fit['heldout_pairs']} held-out pairs"
            + (f" (the {fit['kept_criterion']} best; best steps {fit['criterion_best_steps']})" if len(fit.get("criterion_best_steps") or {}) > 1 else "")
            + (f"; restart {fit['chosen_restart'] + 1} of {fit['restarts']} kept" if fit["restarts"] > 1 else "")
            + (f" (head scale {fit['head_init']:g}" + (f", {fit['start_z']:.2f} SE ahead of the first scale" if fit.get("start_z") is not None else "") + ")"
               if fit["restarts"] > 1 and fit.get("head_init") is not None else "")
            + alpha_phrase(fit, "held-out values")
            + (f"; refitted on all {metrics['train_pairs']} pairs for {fit['refit_steps']} steps" if fit.get("refit_steps") else "")
        )
    for w in metrics["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    for name, path in metrics["files"].items():
        console.print(f"{name}: {path}")
