"""`micro compare`: several `micro adapt` results side by side.

Each result directory is named by its run id (the `run_id` results.json carries, or a hash of its
configuration for older files) and described by the configuration fields that differ between the
results compared, so a table of five runs says what changed from one to the next.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CompareError(ValueError):
    """A result directory that cannot be compared; the message says which and why."""


@dataclass
class Result:
    path: Path
    run_id: str
    settings: dict[str, Any]
    summary: dict[str, dict[str, dict[str, dict[str, float]]]]
    attributes: list[str]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def run_id_of(results: dict[str, Any]) -> str:
    """The result's run id: its own, or the first 8 hex digits of the hash of what configured it."""
    if results.get("run_id"):
        return str(results["run_id"])
    basis = {k: results.get(k) for k in ("config", "stage1_config", "cache", "eval_cache", "run_dir")}
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:8]


def load_result(path: str | Path) -> Result:
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise CompareError(f"{path}: no results.json; give a `micro adapt --out` directory.")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun the command that wrote it.") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or not isinstance(data.get("attributes"), list):
        raise CompareError(f"{file}: not a `micro adapt` results.json (no summary/attributes).")
    settings: dict[str, Any] = {}
    _flatten("", {"adapt": data.get("config", {}), "stage1": data.get("stage1_config", {}),
                  "cache": data.get("cache"), "eval_cache": data.get("eval_cache"), "run_dir": data.get("run_dir")}, settings)
    return Result(file.parent, run_id_of(data), settings, data["summary"], [str(a) for a in data["attributes"]])


def differing(results: list[Result]) -> list[str]:
    """Setting names whose values are not the same in every result (lists compared as values)."""
    keys = sorted(set().union(*(r.settings for r in results)))
    return [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True, default=str) for r in results}) > 1]


def compare(paths: list[str | Path], budget: int | None = None) -> dict[str, Any]:
    """{"budget", "results": [{path, run_id, differs: {setting: value}}], "methods", "rows": [tidy rows]}.

    `budget` defaults to the largest budget every result has."""
    if len(paths) < 2:
        raise CompareError("give at least two result directories to compare.")
    results = [load_result(p) for p in paths]
    common = set.intersection(*({int(b) for b in r.summary} for r in results))
    if budget is None:
        if not common:
            raise CompareError("the results share no budget; pass --budget B with a budget each of them has.")
        budget = max(common)
    elif budget not in common:
        missing = [str(r.path) for r in results if str(budget) not in r.summary]
        raise CompareError(f"budget {budget} is missing from {', '.join(missing)}; common budgets: {sorted(common) or 'none'}.")
    changed = differing(results)
    methods: list[str] = []
    rows = []
    for r in results:
        for method, cells in r.summary[str(budget)].items():
            if method not in methods:
                methods.append(method)
            for column, stat in cells.items():
                rows.append({"run_id": r.run_id, "path": str(r.path), "budget": budget, "method": method,
                             "attribute": column, "mean": stat["mean"], "std": stat["std"], "seeds": stat["seeds"],
                             **{k: r.settings.get(k) for k in changed}})
    return {
        "budget": budget,
        "results": [{"path": str(r.path), "run_id": r.run_id, "differs": {k: r.settings.get(k) for k in changed}} for r in results],
        "methods": methods,
        "rows": rows,
    }


def average_table(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per method, one column per result, the per-attribute Average as mean ± std."""
    ids = [r["run_id"] for r in comparison["results"]]
    cell = {(row["run_id"], row["method"]): row for row in comparison["rows"] if row["attribute"] == "Average"}
    body = []
    for method in comparison["methods"]:
        line = [method]
        for rid in ids:
            row = cell.get((rid, method))
            line.append(f"{row['mean']:.3f} ± {row['std']:.3f}" if row else "—")
        body.append(line)
    return ["method", *ids], body


#: The files `micro compare` writes into its --out folder.
COMPARE_FILES = ("compare.json", "compare.csv", "compare.md", "compare.png")


def write_comparison(comparison: dict[str, Any], out: str | Path, *, plot: bool = True, overwrite: bool = False) -> dict[str, str]:
    """Write compare.json, compare.csv (tidy), compare.md and, with matplotlib, compare.png into `out`,
    beside anything else there (micro.outputs.output_files: an existing one is replaced only with
    `overwrite`)."""
    from .outputs import output_files

    final = Path(out)
    inputs = [r["path"] for r in comparison["results"]]
    with output_files(final, COMPARE_FILES, overwrite=overwrite, what="comparison", inputs=inputs) as out:
        files = _write_comparison(comparison, out, plot)
    return {k: str(final / v.name) for k, v in files.items()}


def _write_comparison(comparison: dict[str, Any], out: Path, plot: bool) -> dict[str, Path]:
    import pandas as pd

    files = {"json": out / "compare.json", "csv": out / "compare.csv", "markdown": out / "compare.md"}
    files["json"].write_text(json.dumps(comparison, indent=2, default=str) + "\n")
    pd.DataFrame(comparison["rows"]).to_csv(files["csv"], index=False)
    header, body = average_table(comparison)
    lines = [f"# Average accuracy at budget {comparison['budget']} (mean ± std over seeds)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "## What differs", ""]
    for r in comparison["results"]:
        settings = ", ".join(f"`{k}` = {json.dumps(v, default=str)}" for k, v in r["differs"].items()) or "nothing"
        lines.append(f"- **{r['run_id']}** ({r['path']}): {settings}")
    files["markdown"].write_text("\n".join(lines) + "\n")
    if plot:
        try:
            files["plot"] = _plot(comparison, out / "compare.png")
        except ImportError:
            pass
    return files


def _plot(comparison: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ids = [r["run_id"] for r in comparison["results"]]
    methods = comparison["methods"]
    cell = {(row["run_id"], row["method"]): row for row in comparison["rows"] if row["attribute"] == "Average"}
    width = 0.8 / len(ids)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) * max(1, len(ids) / 2)), 4))
    x = np.arange(len(methods))
    for i, rid in enumerate(ids):
        means = [cell[(rid, m)]["mean"] if (rid, m) in cell else np.nan for m in methods]
        stds = [cell[(rid, m)]["std"] if (rid, m) in cell else 0.0 for m in methods]
        ax.bar(x + (i - (len(ids) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=rid)
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("average accuracy")
    ax.set_title(f"budget {comparison['budget']}")
    ax.legend(title="run", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
