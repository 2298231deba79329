"""`run_adapt`: stage-2 adaptation over budgets x seeds, every selected method scored on the same test pairs.

 1. `open_sweep` (micro.router.frame) loads the stage-1 run and the cache(s) once and computes the frozen
    heads' margins;
 2. each selected method's plug-in (micro.router.plugin; the list is micro.methods) prepares once;
 3. per seed, each user's budget pairs are drawn from the train split (nested across budgets; or asked for
    by an active rule, micro.router.acquire);
 4. per budget, each plug-in scores the test pairs; micro's routers (and micro-refine's heads) are saved;
 5. results.json / results.csv / table.md / budget_curve.png are written, with each method's seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from ..embedcache.handle import Cache
from ..outputs import diff_fields, refuse_existing, relocate, writing_dir
from .acquire import SCORES, AcquireOptions, acquire_pairs
from .config import AdaptConfig
from .frame import open_sweep
from .methods.micro import informativeness, save_routers
from .plugin import Budget, Sweep, build_options, make_plugins
from .scores import summarise


def run_adapt(cache: Cache | str | Path, run_dir: str | Path, out: str | Path, config: AdaptConfig | None = None, *,
              log: Callable[[str], None] | None = None, overwrite: bool = False, save_routers: bool = True, plot: bool = True) -> dict:
    """Adapt RUN_DIR's router to the users of CACHE (a path or an open `Cache`) over config.budgets x
    config.seeds and score every selected method on the (eval) cache's test split. Writes
    OUT/{results.json, results.csv, table.md, budget_curve.png (`plot`), routers/ (`save_routers`), baselines/}
    and returns the results dict.

    OUT is built in a temporary sibling folder and renamed into place when complete (its baselines/ are
    carried over and reused); an existing non-empty OUT is refused, naming what differs, unless `overwrite`.
    """
    config = config or AdaptConfig()
    out = Path(out)
    refuse = lambda: refuse_existing(out, "adapt results", _adapt_differences(out, Path(cache), run_dir, config))  # noqa: E731
    with writing_dir(out, overwrite=overwrite, what="adapt folder", inputs=[Path(cache), run_dir, config.eval_cache, *config.baseline_runs],
                     keep=("baselines",), existing=refuse) as tmp:
        results = relocate(_adapt_into(cache, run_dir, tmp, config, log=log, save_routers_=save_routers, plot=plot), tmp, out)
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _adapt_differences(out: Path, cache, run_dir, config: AdaptConfig) -> list[str]:
    """What separates the results in `out` from the ones this call would write."""
    try:
        old = json.loads((out / "results.json").read_text())
        old_config = dict(old["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return [f"it holds no finished `micro adapt` results ({len(list(out.iterdir()))} entries)"]
    new = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as results.json stores them
    diffs = diff_fields(old_config, new)
    for name, value in (("cache", str(Path(cache).resolve())), ("run_dir", str(Path(run_dir).resolve()))):
        if old.get(name) != value:
            diffs.append(f"{name}: {old.get(name)!r} -> {value!r}")
    return diffs


def _adapt_into(cache: Cache | str | Path, run_dir: str | Path, out: Path, config: AdaptConfig, *, log: Callable[[str], None] | None = None,
                save_routers_: bool = True, plot: bool = True) -> dict:
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    plugins = make_plugins(config)  # unknown methods and options are refused before anything loads
    sweep = open_sweep(cache, run_dir, Path(out), config, log)
    timings: dict = {"load": time.perf_counter() - t0, "methods": {p.name: {"prepare": 0.0, "score": 0.0} for p in plugins}}
    for p in plugins:
        t = time.perf_counter()
        p.prepare(sweep)
        timings["methods"][p.name]["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    asked, at_random = _draw(sweep)
    timings["draw"] = time.perf_counter() - t
    for size in config.budgets:
        budget = Budget(size, asked[size], at_random[size])
        for p in plugins:
            t = time.perf_counter()
            for seed, value in p.score(sweep, budget).items():
                sweep.scores.add(p.name, size, seed, value)
            timings["methods"][p.name]["score"] += time.perf_counter() - t
        if save_routers_:
            save_routers(sweep, budget)
    timings["total"] = time.perf_counter() - t0
    results = _results(sweep, timings)
    from .report import write_outputs

    results["files"] = write_outputs(results, Path(out), plot=plot)
    return results


def _draw(sweep: Sweep) -> tuple[dict, dict]:
    """{budget: one {user: train rows} per seed} and the same of random-order masks (micro.router.acquire)."""
    config = sweep.config
    options = build_options(AcquireOptions, config.options.get("acquire", {}), "acquire")
    rule = informativeness(sweep, SCORES[config.acquire]) if config.acquire != "random" else None
    asked, at_random = acquire_pairs(config.acquire, sweep.train, sweep.seeds, config.budgets, options.batch, options.random,
                                     rule, with_random_mask=True)
    if config.acquire != "random" and sweep.eval_train is not None and sweep.eval_train is not sweep.train:
        sweep.notes.append(f"--acquire {config.acquire} chooses the adapt cache's pairs; the eval cache's budget pairs are the seeded random draw.")
    return asked, at_random


def _results(sweep: Sweep, timings: dict) -> dict:
    """The results dict of a finished sweep (results.json)."""
    config, test, rows = sweep.config, sweep.test, sweep.scores.rows
    for r in sweep.scores.records:
        r["acquire"] = config.acquire
    attributes = [test.attributes[a] for a in sorted(rows)]
    eval_meta = sweep.evaluate.meta
    inputs = {  # what the results were computed from, by content: a moved file keeps its run id
        "cache_sha256": sweep.cache.meta.get("source_sha256"),
        "eval_cache_sha256": eval_meta.get("source_sha256"),
        "run_model_sha256": _file_sha256(sweep.run_dir / "model.safetensors"),
    }
    shots = next(iter(sweep.scores.shots.values()), None)
    return {
        "run_id": hashlib.sha256(json.dumps({**inputs, "config": config.to_dict()}, sort_keys=True).encode()).hexdigest()[:12],
        "cache": str(sweep.cache.path.resolve()),
        "eval_cache": str(sweep.evaluate.path.resolve()),
        "run_dir": str(sweep.run_dir.resolve()),
        "inputs": inputs,
        "config": config.to_dict(),
        "stage1_config": sweep.run_config.get("config", {}),
        "head_input": "context" if sweep.augmented else "response",
        "contexts": sweep.contexts,
        "acquire": config.acquire,
        "attributes": attributes,
        "methods": [m for m in config.method_names if any(r["method"] == m for r in sweep.scores.records)],
        "test_pairs": {test.attributes[a]: int(len(rows[a])) for a in sorted(rows)},
        "hyre_shots": {test.attributes[a]: int(len(shots[sweep.seeds[0]][a])) for a in sorted(rows)} if shots else {},
        "records": sweep.scores.records,
        "summary": summarise(sweep.scores.records, attributes),
        "notes": sweep.notes,
        "timings_s": _rounded(timings),
    }


def _rounded(timings: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 3) for k, v in timings.items()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
