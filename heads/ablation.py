"""The K ablation of stage 1 (paper appendix C.3, Figure 5): one fit per K on one loaded cache.

For each K the best head per attribute and the routed accuracy on the evaluation split; each fit is a
full run directory OUT/k<K>/ (so stage 2 can adapt it: Figure 6, micro.router.k_ablation). Writes
OUT/k_ablation.csv (K, attribute, best_accuracy, routed_accuracy, pairs), OUT/k_ablation.md (rows K,
columns attributes + Average of the best-head accuracy) and OUT/k_ablation.png (needs matplotlib).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..embedcache.handle import Cache
from .config import EVAL_SPLIT, MixtureConfig
from .metrics import evaluate
from .model import save_model
from .run import cache_identity, train_and_eval_splits
from .fit import fit_mixture
from .plots import save_figure


def sweep_k(cache_path: str | os.PathLike, out_dir: str | os.PathLike, ks: list[int], config: MixtureConfig | None = None, *,
            eval_split: str = EVAL_SPLIT, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit `config` at each K in `ks` on the cache (loaded once); returns {"ks", "attributes", "rows", "runs", "files"}."""
    config = config or MixtureConfig()
    log = log or (lambda msg: None)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"--k values must be positive integers, not {ks!r}")
    out = Path(out_dir)
    cache = Cache.of(cache_path)
    meta, cache_path = cache.meta, cache.path
    train, test, _ = train_and_eval_splits(cache, eval_split, config.seed)
    rows, runs, attributes = [], {}, []
    for k in ks:
        cfg = replace(config, k=k).resolved(train)
        model = fit_mixture(train, cfg)
        result = evaluate(model, test, cfg.router_input)
        run = out / f"k{k}"
        save_model(model, run, {"config": cfg.to_dict(), "cache": cache_identity(meta, cache_path), "eval_split": test.split})
        runs[k] = str(run)
        attributes = list(result["per_attribute"])
        for a, v in result["per_attribute"].items():
            rows.append({"k": k, "attribute": a, "best_accuracy": v["best_accuracy"], "routed_accuracy": v["routed_accuracy"], "pairs": v["pairs"]})
        avg = result["average"]
        rows.append({"k": k, "attribute": "Average", "best_accuracy": avg["best_accuracy"], "routed_accuracy": avg["routed_accuracy"],
                     "pairs": result["overall"]["pairs"]})
        log(f"K={k}: average best head {avg['best_accuracy']:.4f}, routed {avg['routed_accuracy']:.4f}")
    results = {"ks": ks, "attributes": attributes, "rows": rows, "runs": runs, "config": config.to_dict(), "eval_split": test.split}
    results["files"] = write_k_outputs(results, out)
    return results


def k_table(results: dict[str, Any]) -> str:
    """Markdown: rows K, columns attributes + Average (best-head accuracy), and the routed Average."""
    cols = results["attributes"] + ["Average"]
    cell = {(r["k"], r["attribute"]): r for r in results["rows"]}
    lines = ["| K | " + " | ".join(cols) + " | routed Average |", "|---|" + "---|" * (len(cols) + 1)]
    for k in results["ks"]:
        lines.append(f"| {k} | " + " | ".join(f"{cell[(k, a)]['best_accuracy']:.4f}" for a in cols)
                     + f" | {cell[(k, 'Average')]['routed_accuracy']:.4f} |")
    return "\n".join(lines) + f"\n\nBest-head accuracy per attribute on the {results['eval_split']} split (paper Figure 5).\n"


def write_k_outputs(results: dict[str, Any], out: Path) -> dict[str, str]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "k_ablation.csv", "table": out / "k_ablation.md", "json": out / "k_ablation.json"}
    pd.DataFrame(results["rows"]).to_csv(files["csv"], index=False)
    files["table"].write_text(k_table(results))
    try:
        files["plot"] = plot_k(results, out / "k_ablation.png")
    except ImportError:
        pass
    listing = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps({**results, "files": listing}, indent=1) + "\n")
    return listing


def plot_k(results: dict[str, Any], path: Path) -> Path:
    """Figure 5: best-head accuracy vs K, the average bold and each attribute thin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in results["attributes"] + ["Average"]:
        pts = [(r["k"], r["best_accuracy"]) for r in results["rows"] if r["attribute"] == a]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", lw=2.5 if a == "Average" else 1,
                color="k" if a == "Average" else None, alpha=1 if a == "Average" else 0.6, label=a)
    return save_figure(fig, ax, path, xlabel="number of heads K", ylabel="best-head accuracy", title="Stage-1 K ablation",
                       legend_size=7)
