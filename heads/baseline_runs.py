"""`micro fit-mixture --with-baselines`: fit the stage-1 baselines of a MiCRo run beside it and record them.

The baselines (single, static, ensemble) are fitted with the run's own config (same K, seed, epochs)
under RUN/baselines/<method>, and their absolute paths are recorded in RUN/config.json under
"baselines": `micro adapt` reads them from there (micro.router.stage1_baselines), never by scanning.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ..methods import BASELINE_FITS
from .config import EVAL_SPLIT, MixtureConfig
from .run import run_fit_mixture


def fit_baseline_runs(cache_path: str | os.PathLike, run_dir: str | os.PathLike, config: MixtureConfig, *,
                      eval_split: str = EVAL_SPLIT) -> dict[str, dict]:
    """Fit each baseline into RUN_DIR/baselines/<method>, record the paths in RUN_DIR/config.json;
    returns {method: metrics}."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: fit the MiCRo run before its baselines.")
    metrics, paths = {}, {}
    for method in BASELINE_FITS:
        path = run_dir / "baselines" / method
        metrics[method] = run_fit_mixture(cache_path, path, replace(config, method=method), eval_split=eval_split)
        paths[method] = str(path.resolve())
    run_config = json.loads(cfg_path.read_text())
    run_config["baselines"] = paths
    cfg_path.write_text(json.dumps(run_config, indent=2) + "\n")
    return metrics
