"""The stage-1 baselines of stage 2 (single, static, ensemble), from explicit sources only.

Where each baseline model comes from, in order:
 1. a run directory given explicitly (`micro adapt --baselines DIR ...`, AdaptConfig.baseline_runs);
 2. a run recorded in the MiCRo run's config.json under "baselines" (`micro fit-mixture --with-baselines`);
 3. a fit now, with the MiCRo run's config, on the stage-1 training data: the adapt cache when it is the
    cache the run was trained on, else the cache recorded in the run when it is still there unchanged;
    the fit is kept under OUT/baselines/<method> and reused by a rerun with the same data and config.
Anything else is refused: a baseline fitted on the adapt cache of another dataset (cross-dataset, Table 4)
would not be the stage-1 model the paper compares against. Nothing scans folders for runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..embedcache.handle import Cache
from ..embedcache.store import CacheError, CacheSplit, load_split, read_meta, split_fingerprint
from ..heads import MixtureConfig, check_cache_matches, fit_mixture, load_model
from ..heads.model import MixtureRewardModel, save_model
from ..methods import BASELINE_FITS


def same_data(recorded: Mapping[str, Any], path: Path, meta: Mapping[str, Any]) -> bool:
    """Whether the cache at `path` holds the data a run recorded (same file, or same source table and backbone)."""
    if recorded.get("path") and Path(recorded["path"]).resolve() == path.resolve():
        return True
    keys = ("source_sha256", "model_id", "model_revision", "pooling", "hidden_size")
    return bool(recorded.get("source_sha256")) and all(recorded.get(k) == meta.get(k) for k in keys)


def _load_given(path: Path, meta: Mapping[str, Any], what: str) -> tuple[str, MixtureRewardModel]:
    model, cfg = load_model(path)
    method = cfg.get("config", {}).get("method")
    if method not in BASELINE_FITS:
        raise ValueError(f"{what} {path} is a {method!r} run; baselines are runs of `micro fit-mixture --method "
                         f"{'|'.join(BASELINE_FITS)}`.")
    check_cache_matches(cfg, meta)
    return method, model.eval()


def stage1_training_split(run_config: Mapping[str, Any], cache: Cache) -> CacheSplit:
    """The train split of the run's stage-1 data: CACHE's when CACHE is that data, else the recorded
    cache's when it is still there unchanged; CacheError (with the fixes) otherwise."""
    recorded = run_config.get("cache", {})
    if same_data(recorded, cache.path, cache.meta):
        return cache.split("train")
    path = Path(recorded["path"]) if recorded.get("path") else None
    if path is not None and path.exists():
        stage1_meta = read_meta(path)
        if same_data(recorded, path, stage1_meta) and "train" in stage1_meta["splits"]:
            return load_split(path, "train")
    raise CacheError(
        f"the baselines (single, static, ensemble) must be fitted on the MiCRo run's stage-1 data "
        f"({recorded.get('path', 'not recorded')}), not on {cache}: that file is "
        + ("missing or changed" if path is not None else "not recorded in the run")
        + ". Pass --baselines DIR ... (runs of `micro fit-mixture --method single|static|ensemble` on the stage-1 "
        "data), refit the run with `micro fit-mixture --with-baselines`, or leave them out: --methods default,-baselines."
    )


def load_baselines(
    run_dir: Path,
    run_config: Mapping[str, Any],
    given: list[str],
    cache: Cache,
    out: Path,
    log: Callable[[str], None],
) -> dict[str, MixtureRewardModel]:
    """{'single', 'static', 'ensemble': model} from the sources listed in the module docstring."""
    meta = cache.meta
    models: dict[str, MixtureRewardModel] = {}
    for path in given:
        method, model = _load_given(Path(path), meta, "--baselines")
        if method in models:
            raise ValueError(f"--baselines names two {method!r} runs; give one run per method.")
        models[method] = model
        log(f"baseline {method}: {path} (given)")
    for method, path in (run_config.get("baselines") or {}).items():
        if method not in models:
            path = Path(path) if Path(path).is_absolute() else run_dir / path
            models[method] = _load_given(path, meta, f"baseline recorded in {run_dir / 'config.json'}:")[1]
            log(f"baseline {method}: {path} (recorded in the run)")
    missing = [m for m in BASELINE_FITS if m not in models]
    if not missing:
        return models
    data = stage1_training_split(run_config, cache)
    base = MixtureConfig.from_dict(run_config.get("config", {}))
    finger = split_fingerprint(data, data.meta)
    for method in missing:
        cfg = replace(base, method=method)
        cached = out / "baselines" / method
        if (cached / "config.json").exists():
            saved = json.loads((cached / "config.json").read_text())
            if saved.get("cache_fingerprint") == finger and saved.get("config") == cfg.to_dict():
                models[method] = load_model(cached)[0].eval()
                log(f"baseline {method}: reused {cached}")
                continue
        start = time.perf_counter()
        model = fit_mixture(data, cfg)
        save_model(model, cached, {"config": cfg.to_dict(), "cache": run_config.get("cache"), "cache_fingerprint": finger})
        models[method] = model.eval()
        log(f"baseline {method}: fitted on the stage-1 data in {time.perf_counter() - start:.1f}s -> {cached}")
    return models
