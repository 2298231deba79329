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


def fit_summary(fit: dict, train_pairs: int) -> str:
    """One line on how stage 1 stopped and which candidate it selected ('' for a fixed schedule)."""
    if fit.get("schedule") != "early-stopping":
        return ""
    where = (f"{fit['folds']}-fold cross-validation over prompts" if fit.get("folds") else f"{fit['heldout_pairs']} held-out pairs")
    line = (f"early stopping on {where}: {fit['steps']} steps ({fit['stop_reason']}), kept step {fit['best_step']} "
            f"(the {fit['kept_criterion']} best, {fit['best_heldout_nll']:.4f})")
    if len(fit.get("candidates") or []) > 1:
        cand = fit["candidates"][fit["chosen"]]
        lead = f", {fit['chosen_z']:.2f} SE ahead of the default's" if fit.get("chosen_z") is not None else ""
        line += (f"; candidate {fit['chosen'] + 1} of {len(fit['candidates'])} selected (alpha {cand['alpha']:g}, "
                 f"head scale {cand['head_init']:g}{lead})")
    if fit.get("refit_steps"):
        line += f"; refitted on all {train_pairs} pairs for {fit['refit_steps']} steps"
    return line + f"; {fit['steps_vs_one_start']:.2f}x the steps of one candidate, {fit['time_vs_matmul']:.1f}x its matrix products' time"


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
    summary = fit_summary(metrics.get("fit") or {}, metrics["train_pairs"])
    if summary:
        console.print(summary)
    for w in metrics["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    for name, path in metrics["files"].items():
        console.print(f"{name}: {path}")
