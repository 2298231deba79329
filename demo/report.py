"""report.md (and report.html with the figures inline) from the demo's summary: one page a person reads."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..methods import REGISTRY

# Methods of the headline table, in reading order, with what each one is.
HEADLINE = [(name, REGISTRY[name].description) for name in REGISTRY]


def _fmt(entry: dict | None, sep: str = " ± ") -> str:
    if not entry:
        return "–"
    return f"{entry['mean']:.3f}{sep}{entry['std']:.3f}" if entry.get("seeds", 1) > 1 else f"{entry['mean']:.3f}"


def headline_rows(summary: dict, *, short: bool = False) -> tuple[list[str], list[list[str]], int]:
    """The comparison table at the largest budget: rows = methods, columns = groups + Average.
    `short` names rows by method only (for a terminal)."""
    adapt = summary["adapt"]
    budget = max(int(b) for b in adapt["summary"])
    at = adapt["summary"][str(budget)]
    header = ["method"] + list(adapt["attributes"]) + ["Average"]
    rows = []
    for method, label in HEADLINE:
        if method in at:
            name = method if short else f"{label} (`{method}`)"
            rows.append([name] + [_fmt(at[method].get(a), "±" if short else " ± ") for a in header[1:]])
    return header, rows, budget


def stage1_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    attrs = list(next(iter(summary["stage1"].values()))["per_attribute"])
    header = ["stage-1 method"] + attrs + ["Average", "routed", "router entropy", "head agreement"]
    rows = []
    for method, s in summary["stage1"].items():
        per = s["per_attribute"]
        ent, agr = s.get("router_entropy"), s.get("head_agreement")
        rows.append(
            [method]
            + [f"{per[a]['best_accuracy']:.3f} (head {per[a]['best_head']})" for a in attrs]
            + [f"{s['average']['best_accuracy']:.3f}", f"{s['average']['routed_accuracy']:.3f}",
               "–" if ent is None else f"{ent:.3f}", "–" if agr is None else f"{agr:.3f}"]
        )
    return header, rows


def budget_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    adapt = summary["adapt"]
    methods = [m for m in REGISTRY if REGISTRY[m].block == "budget" and m in adapt["methods"]]
    header = ["budget per group"] + methods
    rows = []
    for b in sorted(adapt["summary"], key=int):
        rows.append([b] + [_fmt(adapt["summary"][b].get(m, {}).get("Average")) for m in methods])
    return header, rows


def zero_label_rows(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Accuracy on groups that stage 1 never saw (leave one group out), or None when not run."""
    zero = summary.get("zero_label")
    if not zero or not zero.get("micro"):
        return None
    groups = [g for g in zero["micro"] if g != "Average"] + ["Average"]
    labels = {"micro": "MiCRo routed by the unseen group's context (`micro`)", "single": "one BT head on the other groups (`single`)"}
    return ["zero labels (group left out of stage 1)"] + groups, [
        [labels.get(m, m)] + [f"{scores[g]:.3f}" if g in scores else "–" for g in groups] for m, scores in zero.items()
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.replace('`', ''))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(summary: dict, out: Path, into: Path | None = None) -> dict[str, Path]:
    """Write report.md always and report.html when there are figures to inline; returns their paths in
    `out`. The figures are read from `out`; the files are written into `into` (default `out`: a writer's
    temporary folder renamed into `out` afterwards)."""
    out = Path(out)
    into = Path(into) if into is not None else out
    embed, t = summary["embed"], summary["timings_s"]
    h_header, h_rows, budget = headline_rows(summary)
    sections = [
        ("Personalized reward models on the demo data",
         f"Test accuracy (fraction of test pairs where the group's preferred response scores higher), mean ± std over "
         f"{summary['config']['seeds']} seeds, at a stage-2 budget of {budget} labelled pairs per group.",
         (h_header, h_rows)),
        ("Stage 1: best head per group", "Each head is scored on every group; the best head and its accuracy.",
         stage1_rows(summary)),
        ("Stage 2: accuracy vs budget (average over groups)",
         "A fresh head per group (`budget-bt`) needs that group's labels; MiCRo starts from the routed stage-1 heads.",
         budget_rows(summary)),
        ("Cache and timings", "",
         (["what", "value"], [
             ["pairs", str(embed["n_pairs"])],
             ["distinct sequences embedded", f"{embed['sequences']} responses, {embed['prompts']} prompts, {embed['context_prompts']} context+prompts"],
             ["dedup factor (pair references / distinct sequences)", f"{embed['dedup_factor']:.2f}"],
             ["embed", "reused existing cache" if embed["noop"] else f"{t['embed']:.1f} s"],
             ["fit-mixture (4 methods)", f"{t['fit-mixture']:.1f} s"],
             ["adapt (all budgets and seeds)", f"{t['adapt']:.1f} s"],
             *([["zero labels (stage 1 without each group)", f"{t['zero-label']:.1f} s"]] if "zero-label" in t else []),
             ["total", f"{t['total']:.1f} s"],
         ])),
    ]
    zero = zero_label_rows(summary)
    if zero is not None:
        sections.insert(3, ("Users never seen: zero labels",
                            "Each group in turn is left out of stage 1 entirely; its test pairs are then scored by the mixture "
                            "routed on the group's own context (no label from the group at all), beside one BT head fitted "
                            "on the other groups. `budget-bt` cannot serve these users: it has no pair to fit.", zero))
    warnings = [f"{m}: {w}" for m, s in summary["stage1"].items() for w in s.get("warnings", [])]
    figures = [
        ("Figure: accuracy vs budget", out / "adapt" / "budget_curve.png"),
        ("Figure: stage-1 router weights for sample prompts", out / "runs" / "micro" / "router_heatmap.png"),
    ]
    figures = [(c, p) for c, p in figures if p.exists()]

    md = []
    for title, text, (header, rows) in sections:
        md += [f"## {title}", ""] + ([text, ""] if text else []) + [_md_table(header, rows), ""]
    if warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    for caption, p in figures:
        md += [f"![{caption}]({p.relative_to(out).as_posix()})", ""]
    paths = {"markdown": out / "report.md"}
    (into / "report.md").write_text("# micro demo report\n\n" + "\n".join(md))

    if figures:
        parts = ["<!doctype html><meta charset='utf-8'><title>micro demo report</title>",
                 "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style>",
                 "<h1>micro demo report</h1>"]
        for title, text, (header, rows) in sections:
            parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>" if text else "", _html_table(header, rows)]
        if warnings:
            parts += ["<h2>Warnings</h2><ul>"] + [f"<li>{html.escape(w)}</li>" for w in warnings] + ["</ul>"]
        for caption, p in figures:
            data = base64.b64encode(p.read_bytes()).decode()
            parts += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}' style='max-width:100%'>"]
        paths["html"] = out / "report.html"
        (into / "report.html").write_text("\n".join(parts))
    return paths


def print_headline(summary: dict, seeds: int, console=None) -> None:
    """Print the demo's headline table, the zero-label line, the timings and where the report is.

    No cell is ever cut: redirected output (a file has no width) gets the whole table; a terminal too
    narrow for it gets the means only, and one too narrow for that gets the Average with the worst- and
    best-served group (report.md always has every group). `console`: a rich Console (default: stdout's)."""
    from rich.console import Console
    from rich.table import Table

    header, rows, budget = headline_rows(summary, short=True)
    name_width = max(len(r[0]) for r in rows)
    console = console or Console()
    full = 4 + name_width + sum(3 + max(len(h), 11) for h in header[1:])
    if not console.is_terminal:
        console.width = max(console.width, full)
    title = f"Demo: test accuracy per user group, {budget} labelled pairs per group, {seeds} seeds"
    means = [[r[0]] + [c.split("±")[0] for c in r[1:]] for r in rows]
    if console.width >= full:
        title += " (mean ± std)"
    elif console.width >= 4 + name_width + sum(3 + max(len(h), 5) for h in header[1:]):
        rows, title = means, title + " (mean; ± std in report.md)"
    else:
        groups = header[1:-1]

        def spread(row: list[str]) -> list[str]:
            values = [(float(v), g) for v, g in zip(row[1:-1], groups) if v.strip() not in ("", "–")]
            lo, hi = min(values), max(values)
            return [row[0], row[-1], f"{lo[0]:.3f} {lo[1]}", f"{hi[0]:.3f} {hi[1]}"]

        header = [header[0], "Average", "worst group", "best group"]
        rows, title = [spread(r) for r in means], title + " (per group in report.md)"
    table = Table(title=title)
    table.add_column(header[0], no_wrap=True, min_width=name_width)
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
