"""Figure 6: stage-2 accuracy vs budget for MiCRo runs of several K (the runs of micro.heads.ablation)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .config import AdaptConfig, KAblationConfig
from .sweep import run_adapt
from ..heads.config import MixtureConfig
from ..heads.plots import save_figure
from ..outputs import atomic_file

K_CONFIG = "sweep_k_config.json"


def save_k_config(out: str | Path, config: KAblationConfig, stage1: MixtureConfig, stage2: AdaptConfig | None,
                  **facts: Any) -> str:
    """OUT/sweep_k_config.json: the resolved `micro sweep-k` config under "config" (so the file is a valid
    `--config`), the stage-1 and stage-2 configs it ran, and `facts` (cache, paper preset)."""
    path = Path(out) / K_CONFIG
    resolved = {**facts, "config": config.to_dict(), "stage1": stage1.to_dict(),
                "stage2": stage2.to_dict() if stage2 is not None else None}
    with atomic_file(path, "sweep-k config") as tmp:
        tmp.write_text(json.dumps(resolved, indent=1) + "\n")
    return str(path)


def adapt_k_runs(cache: "Cache | str | Path", runs: dict[int, str], out: str | Path, config: AdaptConfig, *,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """run_adapt for each K's run (OUT/adapt_k<K>/), then OUT/k_budget.json and OUT/k_budget.png:
    MiCRo's average accuracy per budget for each K."""
    out = Path(out)
    config = replace(config, methods=["micro"])  # the curves are MiCRo's alone
    curves = {}
    for k, run in sorted(runs.items()):
        res = run_adapt(cache, run, out / f"adapt_k{k}", config, log=log)
        curves[k] = {b: entry["micro"]["Average"] for b, entry in res["summary"].items() if "Average" in entry.get("micro", {})}
    files = {"json": str(out / "k_budget.json")}
    Path(files["json"]).write_text(json.dumps({"curves": {str(k): v for k, v in curves.items()}}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"curves": curves, "files": files}
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, curve in curves.items():
        budgets = sorted(curve, key=int)
        mean = [curve[b]["mean"] for b in budgets]
        std = [curve[b]["std"] for b in budgets]
        x = [int(b) for b in budgets]
        ax.plot(x, mean, "o-", label=f"K = {k}")
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15)
    save_figure(fig, ax, out / "k_budget.png", xlabel="labelled context pairs per attribute (budget B)",
                ylabel="MiCRo average test accuracy", title="Stage 2 vs budget for several K")
    files["plot"] = str(out / "k_budget.png")
    return {"curves": curves, "files": files}
