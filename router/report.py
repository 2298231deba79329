"""Human-readable outputs of a stage-2 sweep: tidy CSV, Markdown table (paper Tables 3/9), budget curve (Figure 4)."""

from __future__ import annotations

import json
from pathlib import Path

from ..methods import REGISTRY, in_block
from ..heads.plots import save_figure



def label(name: str) -> str:
    """A method's table label; † marks a method that learned from the scored users' labels before the budget."""
    entry = REGISTRY.get(name)
    return name if entry is None else entry.label + (" †" if entry.saw_scored_labels else "")


def table_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(row label, cells) in the paper's layout: budget-free baselines, then per budget budget-bt /
    MiCRo / MiCRo-refine, then the oracle lines; cells "mean ± std" over seeds."""
    summary = results["summary"]
    attrs = results["attributes"] + ["Average"]
    budgets = sorted(summary, key=int)
    rows = []

    def cells(entry: dict) -> list[str]:
        return [f"{entry[a]['mean']:.4f} ± {entry[a]['std']:.4f}" if a in entry else "-" for a in attrs]

    first = summary[budgets[0]]
    for m in in_block("fixed"):
        if m in first:
            rows.append((label(m), cells(first[m])))
    for b in budgets:
        for m in in_block("budget"):
            if m in summary[b]:
                rows.append((f"{label(m)} (B = {b})", cells(summary[b][m])))
    for m in in_block("upper"):
        if m in first:
            rows.append((label(m), cells(first[m])))
    return rows


def markdown_table(results: dict) -> str:
    attrs = results["attributes"] + ["Average"]
    lines = ["| Method | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
    for label, row in table_rows(results):
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    seeds = results["config"]["seeds"]
    shots = max(results.get("hyre_shots", {}).values(), default=0)
    foot = (
        f"\nAccuracy on the test pairs of `{results['eval_cache']}` (mean ± sample std over {seeds} seeds). "
        f"Every method is scored on all test pairs except HyRe and MiCRo-HyRe, which lose the (up to) {shots} labelled "
        "shots per attribute they were given. "
        "Average: unweighted mean over attributes per seed. Budget B = labelled context pairs per attribute. "
        "`MiCRo best head` and `Oracle BT` are upper lines: the first picks heads on the test pairs, the second "
        "trains on all of an attribute's training pairs. † marks a method that learned from the scored users' "
        "labels before the budget."
    )
    notes = "".join(f"\n- {n}" for n in results.get("notes", []))
    return "\n".join(lines) + "\n" + foot + ("\n\nNotes:" + notes if notes else "") + "\n"


def write_csv(results: dict, path: Path) -> None:
    import pandas as pd

    cols = ["budget", "seed", "attribute", "method", "accuracy", "pairs", "acquire"]
    frame = pd.DataFrame(results["records"], columns=cols)
    frame.insert(0, "run_id", results.get("run_id"))  # one id per result: several results concatenate cleanly
    frame.to_csv(path, index=False)


def plot_budget_curve(results: dict, path: Path) -> bool:
    """Average accuracy vs budget with ± std bands (Figure 4 style); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = results["summary"]
    budgets = sorted(summary, key=int)
    xs = [int(b) for b in budgets]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, color in (("micro", "C0"), ("micro-refine", "C1"), ("budget-bt", "C2")):
        pts = [(x, summary[b][m]["Average"]) for x, b in zip(xs, budgets) if m in summary[b] and "Average" in summary[b][m]]
        if not pts:
            continue
        x = [p[0] for p in pts]
        mean = [p[1]["mean"] for p in pts]
        std = [p[1]["std"] for p in pts]
        ax.plot(x, mean, "o-", color=color, label=label(m))
        ax.fill_between(x, [a - s for a, s in zip(mean, std)], [a + s for a, s in zip(mean, std)], color=color, alpha=0.2)
    for m, color, style in (("single", "k", "--"), ("oracle", "k", ":"), ("stage1-best", "C3", ":")):
        entry = summary[budgets[0]].get(m, {}).get("Average")
        if entry:
            ax.axhline(entry["mean"], color=color, linestyle=style, label=label(m))
    save_figure(fig, ax, path, xlabel="labelled context pairs per attribute (budget B)", ylabel="average test accuracy",
                title="Stage-2 adaptation vs budget")
    return True


def write_outputs(results: dict, out: Path, *, plot: bool = True) -> dict:
    """results.json, results.csv, table.md (+ budget_curve.png); returns {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"results.json": out / "results.json", "results.csv": out / "results.csv", "table.md": out / "table.md"}
    write_csv(results, files["results.csv"])
    files["table.md"].write_text(markdown_table(results))
    if plot:
        if plot_budget_curve(results, out / "budget_curve.png"):
            files["budget_curve.png"] = out / "budget_curve.png"
        else:
            results.setdefault("notes", []).append("matplotlib not installed: budget_curve.png not drawn.")
    if (out / "routers").is_dir():
        files["routers"] = out / "routers"
    listing = {k: str(v) for k, v in files.items()}
    files["results.json"].write_text(json.dumps({**results, "files": listing}, indent=1) + "\n")
    return listing


def print_results(results: dict) -> None:
    """Print the summary table, notes and files of a `micro adapt` result as the command shows them."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Stage-2 accuracy on {results['eval_cache']} (mean ± std over {results['config']['seeds']} seeds)")
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
