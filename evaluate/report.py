"""Outputs of `micro eval`: results.json, tidy results.csv, table.md, and one reward-bench leaderboard
record per method under rewardbench/ (the `eval-set/<model>.json` layout)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

LABELS = {"single": "Single Reward", "routed": "MiCRo (stage-1 router)", "adapted": "MiCRo (adapted router)"}


def label(method: str, masked: list[int]) -> str:
    if method.startswith("head-"):
        return f"Head {method[5:]}" + (" (masked)" if int(method[5:]) in masked else "")
    return LABELS.get(method, method)


def subset_rows(results: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(header, [(method label, cells)]) of accuracy per subset, then pooled over pairs and averaged."""
    subsets = results["subsets"]
    header = [f"{s} (n={v['n']})" for s, v in subsets.items()] + [f"Overall (n={results['overall']['n']})", "Average"]
    masked = results["config"]["mask_heads"]
    rows = []
    for m in results["methods"]:
        cells = [f"{v['accuracy'][m]:.4f}" for v in subsets.values()]
        cells += [f"{results['overall']['accuracy'][m]:.4f}", f"{results['average'][m]:.4f}"]
        rows.append((label(m, masked), cells))
    return header, rows


def section_rows(results: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """RewardBench sections and their mean, per method ('-': no subset of that section present)."""
    rb = results["rewardbench"]
    first = next(iter(rb.values()))
    header = list(first["sections"]) + ["Score"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    masked = results["config"]["mask_heads"]
    rows = [(label(m, masked), [fmt(v) for v in e["sections"].values()] + [fmt(e["score"])]) for m, e in rb.items()]
    return header, rows


def _markdown(header: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    lines = ["| Method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    return lines + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]


def markdown(results: dict) -> str:
    lines = [f"Accuracy of `{results['run_dir']}` on `{results['source']}` (chosen scored above rejected; ties wrong).", ""]
    lines += _markdown(*subset_rows(results))
    lines += ["", "Overall: pooled over all pairs. Average: unweighted mean over subsets."]
    if "rewardbench" in results:
        first = next(iter(results["rewardbench"].values()))
        lines += ["", "RewardBench sections (reward-bench's arithmetic: subsets weighted by its example counts, "
                  "math-prm counted 984; Score = mean of the four sections):", ""]
        lines += _markdown(*section_rows(results))
        if first["missing_subsets"]:
            lines += ["", f"Missing RewardBench subsets ({len(first['missing_subsets'])}): {', '.join(first['missing_subsets'])}."]
    if results["config"]["mask_heads"]:
        lines += ["", f"Masked heads (zero mixture weight): {results['config']['mask_heads']}."]
    lines += [f"\nnote: {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def tidy_rows(results: dict) -> list[dict]:
    """One row per (level, name, method): level subset | overall | average | section | score."""
    rows = []
    for s, v in results["subsets"].items():
        rows += [{"level": "subset", "name": s, "method": m, "n": v["n"], "accuracy": a} for m, a in v["accuracy"].items()]
    rows += [{"level": "overall", "name": "overall", "method": m, "n": results["overall"]["n"], "accuracy": a}
             for m, a in results["overall"]["accuracy"].items()]
    rows += [{"level": "average", "name": "average", "method": m, "n": len(results["subsets"]), "accuracy": a}
             for m, a in results["average"].items()]
    for m, e in results.get("rewardbench", {}).items():
        rows += [{"level": "section", "name": s, "method": m, "n": "", "accuracy": v} for s, v in e["sections"].items() if v is not None]
        if e["score"] is not None:
            rows.append({"level": "score", "name": "score", "method": m, "n": "", "accuracy": e["score"]})
    return rows


#: The files `micro eval` writes into its --out folder (besides rewardbench/*.json).
EVAL_FILES = ("results.json", "results.csv", "table.md")


def write_outputs(results: dict, out: Path, final: Path | None = None) -> dict[str, str]:
    """Write results.json, results.csv, table.md (and rewardbench/*.json) into `out`; the paths recorded
    (and returned) are those under `final` (default `out`), where the files will be moved."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "csv": out / "results.csv", "table": out / "table.md"}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["level", "name", "method", "n", "accuracy"])
        writer.writeheader()
        writer.writerows(tidy_rows(results))
    files["table"].write_text(markdown(results))
    for m, e in results.get("rewardbench", {}).items():
        path = out / "rewardbench" / (re.sub(r"[^A-Za-z0-9._-]", "_", m) + ".json")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(e["leaderboard"], indent=4, sort_keys=True))
        files[f"rewardbench/{m}"] = path
    names = {k: str(Path(final, v.relative_to(out)) if final else v) for k, v in files.items()}
    files["results"].write_text(json.dumps({**results, "files": names}, indent=2) + "\n")
    return names
