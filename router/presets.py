"""`--paper` for stage 2: the paper's AdaptConfig with the tau of the cache's dataset (micro.paper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import paper
from ..embedcache.store import read_meta
from ..heads import load_run
from .config import AdaptConfig
from .stage1_baselines import same_data


def paper_adapt_config(cache: str | Path, run_dir: str | Path, *, dataset: str | None = None, **overrides: Any) -> tuple[AdaptConfig, str]:
    """(AdaptConfig.paper with the preset's tau unless `overrides` sets it, the note saying what was
    chosen). The preset is the adapt cache's dataset, or 'cross-dataset' when that cache is not the
    stage-1 run's data (Table 4); `dataset` (--paper-dataset) overrides the choice."""
    cache = Path(cache)
    meta = read_meta(cache)
    _, run_config = load_run(run_dir)
    cross = not same_data(run_config.get("cache", {}), cache, meta)
    _, chosen, note = paper.choose(meta, dataset, cross_dataset=cross)
    return AdaptConfig.paper(**{"tau": chosen.tau, **overrides}), note
