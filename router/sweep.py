"""`run_adapt`: stage-2 adaptation over budgets x seeds, scored beside the baselines on the same test pairs.

Read top to bottom:
 1. load the stage-1 MiCRo run and the cache(s); refuse another backbone; fit (or reuse) the baselines;
 2. per seed, draw each attribute's budget pairs (nested across budgets) and its HyRe shots (removed
    from that attribute's test pairs for every method);
 3. per budget, adapt one router per seed (all seeds at once) on the pooled budget pairs of all
    attributes (Algorithm 1), fit budget-bt and micro-refine heads;
 4. score every method per (budget, seed, attribute) and write results.json / results.csv / table.md /
    budget_curve.png / routers.
Heads are frozen, so every head margin is computed once up front; only routers are trained.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..embedcache.store import CacheError, CacheSplit, check_same_table, load_split, read_meta, require_contexts, split_fingerprint
from ..heads.model import MixtureRewardModel, load_model, save_model
from ..outputs import atomic_dir, check_dir_target, diff_fields, is_empty_dir, lock, refuse_existing, relocate
from .api import PersonalizedRewardModel, save_router
from .baselines import fit_budget_bt, fit_oracle_head
from .config import AdaptConfig
from .hedge import adapt_routers, head_losses
from .hyre import hyre_margins, hyre_weights
from .refine import fit_refinement

METHODS = ("micro", "micro-refine", "budget-bt", "single", "static", "ensemble-best", "stage1-best", "hyre", "micro-hyre", "oracle")
BASELINE_RUNS = ("single", "static", "ensemble")


class BudgetError(ValueError):
    """A budget larger than the training pairs an attribute has."""


# ------------------------------------------------------------------------------------------------
# stage-1 artefacts
# ------------------------------------------------------------------------------------------------
def _stage1():
    from .. import heads

    return heads


def _mixture_config(run_config: dict):
    """The MixtureConfig of a run's config.json (load_run's dict: {"config": {...}, "cache": {...}})."""
    return _stage1().MixtureConfig.from_dict(run_config.get("config", run_config))


def _cache_fingerprint(meta: dict, split: CacheSplit) -> dict:
    return split_fingerprint(split, meta)


def load_baselines(run_dir: Path, run_config: dict, train: CacheSplit, meta: dict, out: Path, log: Callable[[str], None]) -> dict[str, MixtureRewardModel]:
    """single / static / ensemble stage-1 models on the adapt cache: a sibling run of RUN_DIR when one
    matches (same method, same training cache, same k), else a cached fit under OUT/baselines/, else
    fit now with the run's config (same k, seed, epochs ...) and cache it there."""
    from dataclasses import replace

    heads = _stage1()
    base = _mixture_config(run_config)
    finger = _cache_fingerprint(meta, train)
    siblings = {}
    for cfg_path in sorted(run_dir.parent.glob("*/config.json")):
        if cfg_path.parent.resolve() == run_dir.resolve() or not (cfg_path.parent / "model.safetensors").exists():
            continue
        if cfg_path.parent.name.startswith("."):  # an unfinished run's temporary folder
            continue
        try:
            sib = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            continue
        sib_cfg = sib.get("config", {})
        method = sib_cfg.get("method")
        if method not in BASELINE_RUNS or method in siblings:
            continue
        if (method != "single" and sib_cfg.get("k") != base.k) or sib.get("cache") != run_config.get("cache"):
            continue
        try:
            heads.check_cache_matches(sib, meta)
        except CacheError:
            continue
        siblings[method] = cfg_path.parent
    models = {}
    for method in BASELINE_RUNS:
        if method in siblings:
            models[method], _ = load_model(siblings[method])
            log(f"baseline {method}: sibling run {siblings[method]}")
            continue
        cached = out / "baselines" / method
        cfg = replace(base, method=method)
        if (cached / "config.json").exists():
            try:
                saved = json.loads((cached / "config.json").read_text())
            except (OSError, ValueError):
                saved = {}  # damaged: refit it
            if saved.get("cache_fingerprint") == finger and saved.get("config") == cfg.to_dict():
                models[method], _ = load_model(cached)
                log(f"baseline {method}: cached {cached}")
                continue
        start = time.perf_counter()
        model = heads.fit_mixture(train, cfg)
        save_model(model, cached, {"config": cfg.to_dict(), "cache": run_config.get("cache"), "cache_fingerprint": finger})
        models[method] = model.eval()
        log(f"baseline {method}: fitted in {time.perf_counter() - start:.1f}s -> {cached}")
    return models


# ------------------------------------------------------------------------------------------------
# draws
# ------------------------------------------------------------------------------------------------
def _attribute_rows(split: CacheSplit) -> dict[int, np.ndarray]:
    attr = split.attribute.numpy()
    return {a: np.flatnonzero(attr == a) for a in range(len(split.attributes)) if (attr == a).any()}


def check_budgets(split: CacheSplit, budgets: list[int], what: str) -> None:
    rows = _attribute_rows(split)
    for a, idx in rows.items():
        if max(budgets) > len(idx):
            raise BudgetError(
                f"budget {max(budgets)} is larger than the {len(idx)} training pairs of attribute "
                f"{split.attributes[a]!r} in {what}; use a budget of at most {len(idx)}."
            )


def draw_budget_pairs(split: CacheSplit, seed: int, budget: int) -> dict[int, np.ndarray]:
    """Seeded draw of `budget` training pairs per attribute; the first b of a seed's permutation, so
    budgets are nested within a seed."""
    out = {}
    for a, idx in _attribute_rows(split).items():
        gen = np.random.default_rng([seed, a, 0xB0D6E7])
        out[a] = idx[gen.permutation(len(idx))[:budget]]
    return out


def draw_shots(split: CacheSplit, seed: int, shots: int) -> dict[int, np.ndarray]:
    """Seeded HyRe shots per attribute of the test split (at most half of an attribute's test pairs)."""
    out = {}
    for a, idx in _attribute_rows(split).items():
        gen = np.random.default_rng([seed, a, 0x5407])
        take = min(shots, len(idx) // 2)
        out[a] = idx[gen.permutation(len(idx))[:take]]
    return out


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Accuracy records plus per-seed evaluation masks (test pairs minus that seed's HyRe shots)."""

    test: CacheSplit
    masks: dict[int, dict[int, np.ndarray]]  # seed -> attribute -> bool mask over test pairs
    records: list[dict] = field(default_factory=list)

    def add(self, method: str, budget: int, seed: int, margins: torch.Tensor | np.ndarray, attributes: list[int] | None = None) -> None:
        correct = np.asarray(margins > 0)
        for a, mask in self.masks[seed].items():
            if attributes is not None and a not in attributes:
                continue
            self.records.append(
                {"budget": budget, "seed": seed, "attribute": self.test.attributes[a], "method": method,
                 "accuracy": float(correct[mask].mean()), "pairs": int(mask.sum())}
            )

    def add_value(self, method: str, budget: int, seed: int, a: int, accuracy: float) -> None:
        self.records.append(
            {"budget": budget, "seed": seed, "attribute": self.test.attributes[a], "method": method,
             "accuracy": float(accuracy), "pairs": int(self.masks[seed][a].sum())}
        )


def summarise(records: list[dict], attributes: list[str]) -> dict:
    """{budget: {method: {attribute | "Average": {"mean", "std", "seeds"}}}}; Average is each seed's
    unweighted mean over attributes (as the paper's tables), then mean ± sample std over seeds."""
    out: dict = {}
    by = {}
    for r in records:
        by.setdefault((r["budget"], r["method"]), {}).setdefault(r["seed"], {})[r["attribute"]] = r["accuracy"]
    for (budget, method), seeds in sorted(by.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]) if kv[0][1] in METHODS else 99)):
        entry = {}
        for attr in attributes:
            vals = [s[attr] for s in seeds.values() if attr in s]
            if vals:
                entry[attr] = _mean_std(vals)
        complete = [np.mean([s[a] for a in attributes]) for s in seeds.values() if all(a in s for a in attributes)]
        if complete:
            entry["Average"] = _mean_std(complete)
        out.setdefault(str(budget), {})[method] = entry
    return out


def _mean_std(vals: list[float]) -> dict:
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "seeds": len(arr)}


# ------------------------------------------------------------------------------------------------
# the sweep
# ------------------------------------------------------------------------------------------------
def _require_contexts(split: CacheSplit) -> None:
    """Refuse (CacheError naming the count) a split with pairs that have no (context + prompt) input."""
    require_contexts(split, "stage 2")


class _LazyRows:
    """table[index[i]] gathered on indexing, so [n, d] router inputs are never materialised."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        self.table, self.index = table, index

    def __getitem__(self, idx) -> torch.Tensor:
        return self.table[self.index[idx]]


def _load_run(run_dir: Path):
    model, config = _stage1().load_run(run_dir)
    return model.eval(), config


def run_adapt(cache: str | Path, run_dir: str | Path, out: str | Path, config: AdaptConfig | None = None, *,
              log: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Adapt RUN_DIR's router to the contexts of CACHE over config.budgets x config.seeds and score
    every method on the (eval) cache's test split. Writes OUT/{results.json, results.csv, table.md,
    budget_curve.png, routers/, baselines/} and returns the results dict.

    OUT is built in a temporary sibling folder and renamed into place when complete (its baselines/ are
    carried over and reused); an existing non-empty OUT is refused, naming what differs, unless `overwrite`.
    """
    config = config or AdaptConfig()
    out = check_dir_target(out)
    with lock(out, "adapt folder"):
        if out.exists() and not is_empty_dir(out) and not overwrite:
            refuse_existing(out, "adapt results", _adapt_differences(out, cache, run_dir, config))
        with atomic_dir(out, keep=("baselines",), what="adapt folder") as tmp:
            results = relocate(_adapt_into(cache, run_dir, tmp, config, log=log), tmp, out)
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
    for name, value in (("cache", str(cache)), ("run_dir", str(run_dir))):
        if old.get(name) != value:
            diffs.append(f"{name}: {old.get(name)!r} -> {value!r}")
    return diffs


def _adapt_into(cache: str | Path, run_dir: str | Path, out: str | Path, config: AdaptConfig, *, log: Callable[[str], None] | None = None) -> dict:
    log = log or (lambda msg: None)
    heads = _stage1()
    cache, run_dir, out = Path(cache), Path(run_dir), Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    model, run_config = _load_run(run_dir)
    model.mask_heads(config.mask_heads)
    mix_config = _mixture_config(run_config)
    if model.router is None:
        raise ValueError(f"{run_dir} is a {mix_config.method!r} run without a router; stage 2 adapts a `micro` run.")
    meta = read_meta(cache)
    heads.check_cache_matches(run_config, meta)
    check_same_table(run_config.get("cache", {}), meta, what=f"the run {run_dir}", path=cache)
    eval_path = Path(config.eval_cache) if config.eval_cache else cache
    eval_meta = read_meta(eval_path) if config.eval_cache else meta
    if config.eval_cache:
        heads.check_cache_matches(run_config, eval_meta)
    for p, m in ((cache, meta), (eval_path, eval_meta)):
        if "train" not in m["splits"] and p == cache:
            raise CacheError(f"cache {p} has no 'train' split to draw the budget pairs from.")
        if "test" not in m["splits"] and p == eval_path:
            raise CacheError(f"cache {p} has no 'test' split to evaluate on.")
    device = torch.device(config.device)
    train = load_split(cache, "train")
    test = load_split(eval_path, "test")
    notes: list[str] = []
    if config.eval_cache:
        if "train" in eval_meta["splits"]:
            eval_train = load_split(eval_path, "train")
        else:
            eval_train = None
            notes.append(f"{eval_path} has no train split: budget-bt, oracle and micro-refine are omitted.")
    else:
        eval_train = train
    _require_contexts(train)
    train_inputs = _LazyRows(train.context_embedding, train.context_index)  # rows gathered only for drawn pairs
    test_inputs = test.context_inputs()
    check_budgets(train, config.budgets, str(cache))
    if eval_train is not None and eval_train is not train:
        _require_contexts(eval_train)
        eval_train_inputs = _LazyRows(eval_train.context_embedding, eval_train.context_index)
        check_budgets(eval_train, config.budgets, str(eval_path))
    else:
        eval_train_inputs = train_inputs
    timings["load"] = time.perf_counter() - t0

    # -- frozen margins, once ---------------------------------------------------------------------
    with torch.no_grad():
        # masked heads: infinite loss, so the Hedge labels give them no mass (the router adapts with the mask)
        train_losses = head_losses(model.head_margins(train.diff)).masked_fill(model.head_mask, float("inf"))  # [n_train, K]
        test_margins = model.head_margins(test.diff)  # [n_test, K]
        kept_margins = test_margins[:, ~model.head_mask]  # the heads the best-head / HyRe baselines may pick
    base_models = load_baselines(run_dir, run_config, train, meta, out, log) if config.baselines else {}
    timings["baselines_fit"] = time.perf_counter() - t0 - timings["load"]

    seeds = config.seed_values
    shots = {s: draw_shots(test, s, config.hyre_shots) for s in seeds}
    test_rows = _attribute_rows(test)
    masks = {}
    for s in seeds:
        masks[s] = {}
        for a, rows in test_rows.items():
            mask = np.zeros(len(test), dtype=bool)
            mask[np.setdiff1d(rows, shots[s][a])] = True
            masks[s][a] = mask
    scores = Scores(test=test, masks=masks)
    attr_ids = sorted(test_rows)

    # -- budget-independent baselines ----------------------------------------------------------------
    t = time.perf_counter()
    fixed: list[tuple[str, int, int | None, Any]] = []  # (method, seed, attribute or None, margins|accuracy)
    with torch.no_grad():
        if base_models:
            single = base_models["single"].routed_margin(test.diff, test.prompt_inputs())
            static = base_models["static"].routed_margin(test.diff, test.prompt_inputs())
            ens = base_models["ensemble"].head_margins(test.diff)
    oracle_margins = None
    if eval_train is not None:
        oracle_margins = torch.zeros(len(test))
        eval_rows = _attribute_rows(eval_train)
        for a in attr_ids:
            if a not in eval_rows:
                notes.append(f"attribute {test.attributes[a]!r} has no training pairs: no oracle.")
                continue
            head, _ = fit_oracle_head(eval_train.diff[eval_rows[a]], config.oracle_grid)
            rows = test_rows[a]
            oracle_margins[rows] = test.diff[rows] @ head
    for s in seeds:
        if base_models:
            fixed.append(("single", s, None, single))
            fixed.append(("static", s, None, static))
        for a in attr_ids:
            mask = masks[s][a]
            fixed.append(("stage1-best", s, a, float((kept_margins[mask] > 0).float().mean(0).max())))
            w = hyre_weights(kept_margins[shots[s][a]], config.hyre_variant)
            fixed.append(("micro-hyre", s, a, float((hyre_margins(kept_margins[mask], w) > 0).float().mean())))
            if base_models:
                fixed.append(("ensemble-best", s, a, float((ens[mask] > 0).float().mean(0).max())))
                w = hyre_weights(ens[shots[s][a]], config.hyre_variant)
                fixed.append(("hyre", s, a, float((hyre_margins(ens[mask], w) > 0).float().mean())))
        if oracle_margins is not None:
            fixed.append(("oracle", s, None, oracle_margins))
    timings["fixed_baselines"] = time.perf_counter() - t

    # -- per budget: adapt routers (all seeds at once), budget-bt, micro-refine ---------------------------
    timings["adapt"] = timings["budget_bt"] = timings["refine"] = timings["evaluate"] = 0.0
    router_info = []
    for budget in config.budgets:
        draws = [draw_budget_pairs(train, s, budget) for s in seeds]
        idx = torch.as_tensor(np.stack([np.concatenate([d[a] for a in sorted(d)]) for d in draws]))  # [S, A*B]
        t = time.perf_counter()
        history: list = []
        routers = adapt_routers(
            model.router, train_inputs[idx].to(device), train_losses[idx].to(device), seeds,
            tau=config.tau, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            weight_decay=config.weight_decay, history=history,
        )
        timings["adapt"] += time.perf_counter() - t

        t = time.perf_counter()
        prms = [PersonalizedRewardModel(model, r) for r in routers]
        routed_test = [(prm.weights(test_inputs) * test_margins).sum(-1) for prm in prms]
        for s, m in zip(seeds, routed_test):
            scores.add("micro", budget, s, m)
        timings["evaluate"] += time.perf_counter() - t

        refine_heads = {}
        if eval_train is not None:
            e_draws = draws if eval_train is train else [draw_budget_pairs(eval_train, s, budget) for s in seeds]
            e_attrs = [a for a in attr_ids if a in e_draws[0]]
            e_idx = torch.as_tensor(np.stack([np.stack([d[a] for a in e_attrs]) for d in e_draws]))  # [S, A', B]
            diff = eval_train.diff[e_idx.reshape(-1)].reshape(len(seeds) * len(e_attrs), budget, -1)
            t = time.perf_counter()
            bt = fit_budget_bt(diff, config.refine_grid)
            bt_heads = bt.delta.reshape(len(seeds), len(e_attrs), -1)
            timings["budget_bt"] += time.perf_counter() - t
            t = time.perf_counter()
            # The prior of each context's head is ONE vector: the stage-1 heads mixed by the adapted router's
            # weights averaged over the context's budget pairs. (Per-pair routed margins on the very pairs the
            # router was trained on fit them in-sample, and cross-validation then trusts a prior that fails on
            # test pairs; an average of K weights carries the context's routing without that leak.)
            with torch.no_grad():
                prior_heads = torch.stack([
                    prm.weights(eval_train_inputs[e_idx[i].reshape(-1)]).reshape(len(e_attrs), budget, -1).mean(1)
                    @ model.head_vectors()
                    for i, prm in enumerate(prms)
                ])  # [S, A', d]
                prior = (diff @ prior_heads.reshape(len(seeds) * len(e_attrs), -1, 1)).squeeze(-1)  # [S*A', B]
            ref = fit_refinement(diff, prior, config.refine_grid, scale_precision=config.refine_scale_precision)
            heads_refined = (ref.scale.reshape(len(seeds), len(e_attrs), 1) * prior_heads
                             + ref.delta.reshape(len(seeds), len(e_attrs), -1))  # [S, A', d]
            timings["refine"] += time.perf_counter() - t
            for i, s in enumerate(seeds):
                bt_m = torch.zeros(len(test))
                ref_m = torch.zeros(len(test))
                for j, a in enumerate(e_attrs):
                    rows = test_rows[a]
                    bt_m[rows] = test.diff[rows] @ bt_heads[i, j]
                    ref_m[rows] = test.diff[rows] @ heads_refined[i, j]
                scores.add("budget-bt", budget, s, bt_m, e_attrs)
                scores.add("micro-refine", budget, s, ref_m, e_attrs)
                refine_heads[s] = {"head": heads_refined[i], "attributes": [test.attributes[a] for a in e_attrs],
                                   "scale": ref.scale.reshape(len(seeds), len(e_attrs))[i].tolist(),
                                   "precision": ref.precision.reshape(len(seeds), len(e_attrs))[i].tolist()}

        for method, s, a, value in fixed:
            if a is None:
                scores.add(method, budget, s, value)
            else:
                scores.add_value(method, budget, s, a, value)

        for i, (s, r) in enumerate(zip(seeds, routers)):
            info = {"budget": budget, "seed": s, "tau": config.tau, "epochs": config.epochs, "lr": config.lr,
                    "run_dir": str(run_dir), "cache": str(cache), "attributes": list(train.attributes),
                    "masked_heads": model.masked_heads,
                    "label_entropy_last_epoch": history[-1]["label_entropy"] if history else None}
            router_info.append(info)
            if config.save_routers:
                rh = refine_heads.get(s)
                save_router(out / "routers" / f"b{budget}_s{s}.safetensors", r,
                            {**info, "refine_precision": rh["precision"] if rh else None, "refine_prior_scale": rh["scale"] if rh else None},
                            refine={k: rh[k] for k in ("head", "attributes")} if rh else None)

    attributes = [test.attributes[a] for a in attr_ids]
    summary = summarise(scores.records, attributes)
    timings["total"] = time.perf_counter() - t0
    results = {
        "cache": str(cache),
        "eval_cache": str(eval_path),
        "run_dir": str(run_dir),
        "config": config.to_dict(),
        "stage1_config": mix_config.to_dict(),
        "attributes": attributes,
        "methods": [m for m in METHODS if any(r["method"] == m for r in scores.records)],
        "test_pairs": {test.attributes[a]: int(masks[seeds[0]][a].sum()) for a in attr_ids},
        "hyre_shots": {test.attributes[a]: int(len(shots[seeds[0]][a])) for a in attr_ids},
        "records": scores.records,
        "summary": summary,
        "notes": notes,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    from .report import write_outputs

    results["files"] = write_outputs(results, out, plot=config.plot)
    return results
