"""Run embed -> fit-mixture (4 methods) -> adapt -> report on the demo data, with the packaged MiniLM.

Every step writes what the corresponding CLI command writes, under one output folder, so a user can
open any stage's files; a rerun reuses the cache (the embed step is a no-op) and refits in seconds (the
demo owns its folder, so its steps replace their earlier outputs, as `--overwrite` does).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..methods import BASELINE_FITS
from ..outputs import output_files
from .config import DemoConfig

#: The stage-1 fits the demo runs: the baselines first, then the MiCRo run stage 2 adapts.
STAGE1_METHODS = (*BASELINE_FITS, "micro")
#: The files the demo writes into its folder itself (every step's own files are written by that step).
REPORT_FILES = ("summary.json", "report.md", "report.html")


def run_demo(config: DemoConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run the pipeline; returns the summary that the report shows (also saved as summary.json)."""
    from ..data import load_preferences, table_sha256
    from ..embedcache import embed_table
    from ..heads import MixtureConfig, run_fit_mixture
    from ..router import AdaptConfig, run_adapt
    from .report import write_report

    config = config or DemoConfig()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if config.n_prompts is None and not config.data_seed:
        table = load_preferences("demo")
    else:
        from ..data.demo import load_demo

        table = load_demo(n_prompts=config.n_prompts, seed=config.data_seed)
    cache = out / "demo.h5"
    log(f"[1/4] embed {len(table)} pairs with {config.model} -> {cache}")
    embed = embed_table(table, model=config.model, out=cache, source_sha256=table_sha256(table), log=log, overwrite=True)
    timings["embed"] = time.perf_counter() - t

    stage1 = {}
    t = time.perf_counter()
    for method in STAGE1_METHODS:
        mcfg = (MixtureConfig.paper if config.paper else MixtureConfig)(method=method, epochs=config.stage1_epochs)
        log(f"[2/4] fit-mixture --method {method}")
        stage1[method] = run_fit_mixture(cache, out / "runs" / method, mcfg, overwrite=True)
    timings["fit-mixture"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[3/4] adapt budgets {config.budgets} x {config.seeds} seeds")
    acfg = (AdaptConfig.paper if config.paper else AdaptConfig)(
        budgets=list(config.budgets), seeds=config.seeds, methods=["default", "drm", "lore"],
        baseline_runs=[str(out / "runs" / m) for m in BASELINE_FITS])
    adapt = run_adapt(cache, out / "runs" / "micro", out / "adapt", acfg, overwrite=True)
    timings["adapt"] = time.perf_counter() - t

    if config.zero_label:
        t = time.perf_counter()
        log("[3/4] zero labels: stage 1 without each group, that group routed by its context")
        mcfg = (MixtureConfig.paper if config.paper else MixtureConfig)(epochs=config.stage1_epochs)
        zero = leave_one_group_out(cache, mcfg)
        timings["zero-label"] = time.perf_counter() - t

    log("[4/4] report")
    summary = {
        "config": asdict(config),
        "embed": embed.to_dict(),
        "stage1": {m: _stage1_summary(r) for m, r in stage1.items()},
        "adapt": {"summary": adapt["summary"], "methods": adapt["methods"], "attributes": adapt["attributes"],
                  "test_pairs": adapt["test_pairs"], "files": adapt.get("files", {})},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    if config.zero_label:
        summary["zero_label"] = zero
    summary["timings_s"]["total"] = round(sum(timings.values()), 2)
    with output_files(out, REPORT_FILES, overwrite=True, what="demo folder") as tmp:  # the demo owns its folder
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["report"] = {k: str(v) for k, v in write_report(summary, out, into=tmp).items()}
    return summary


def _stage1_summary(metrics: dict) -> dict:
    test = metrics["test"]
    return {
        "per_attribute": {
            a: {"best_head": v["best_head"], "best_accuracy": v["best_accuracy"], "routed_accuracy": v["routed_accuracy"], "pairs": v["pairs"]}
            for a, v in test["per_attribute"].items()
        },
        "average": test["average"],
        "router_entropy": metrics.get("router_entropy"),
        "head_agreement": metrics.get("head_agreement"),
        "train_seconds": metrics.get("train_seconds"),
        "warnings": metrics.get("warnings", []),
    }


def leave_one_group_out(cache: Path, config) -> dict:
    """{method: {group | "Average": accuracy}} on each group's test pairs when that group had no pairs at
    all in stage 1: `micro` (mixture fitted on the other groups, weights from the group's own context +
    prompt) and `single` (one BT head on the other groups: what serves an unseen user without context)."""
    from dataclasses import replace

    from ..embedcache import load_split
    from ..heads import evaluate, fit_mixture

    train, test = load_split(cache, "train"), load_split(cache, "test")
    out: dict = {"micro": {}, "single": {}}
    for a, group in enumerate(train.attributes):
        rest = train.subset(torch.nonzero(train.attribute != a).flatten())
        seen = test.subset(torch.nonzero(test.attribute == a).flatten())
        if len(seen) == 0 or len(rest) == 0:
            continue
        for method in out:
            cfg = replace(config, method=method).resolved(rest)
            model = fit_mixture(rest, cfg)
            out[method][group] = evaluate(model, seen, cfg.router_input)["overall"]["routed_accuracy"]
    for scores in out.values():
        if scores:
            scores["Average"] = sum(scores.values()) / len(scores)
    return out
