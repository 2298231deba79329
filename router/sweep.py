"""`run_adapt`: stage-2 adaptation over budgets x seeds, scored beside the baselines on the same test pairs.

Read top to bottom:
 1. load the stage-1 MiCRo run and the cache(s); refuse another backbone; load the baselines
    (micro.router.stage1_baselines: explicit runs, or fits on the stage-1 data);
 2. per seed, draw each attribute's budget pairs from the train split (nested across budgets; or asked
    for by an active rule, micro.router.acquire, also nested) and its HyRe shots from the test split
    (micro.router.draws);
 3. per budget, adapt one router per seed (all seeds at once) on the pooled budget pairs of all
    attributes (Algorithm 1), fit budget-bt and micro-refine heads, and the peers drm and lore
    (micro.router.peers) on the same pairs;
 4. score every method per (budget, seed, attribute) (micro.router.scores: all test pairs, HyRe's
    methods minus their shots) and write results.json / results.csv / table.md / budget_curve.png / routers.
Heads are frozen, so every head margin is computed once up front; only routers are trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..embedcache.store import CacheError, check_same_table, load_split, read_meta, require_contexts
from ..heads import MixtureConfig, check_cache_matches, load_run
from ..methods import METHODS
from ..outputs import diff_fields, refuse_existing, relocate, writing_dir
from .acquire import SCORES, acquire_pairs
from .api import EmbeddingRewardModel, save_router
from .baselines import fit_budget_bt, fit_oracle_head
from .config import AdaptConfig
from .draws import attribute_rows, check_budgets, draw_budget_pairs, draw_shots
from .hedge import adapt_routers, context_log_weights, head_losses
from .hyre import hyre_margins, hyre_weights
from .peers import drm_heads, drm_margins, drm_weights, fit_lore, fit_lore_users
from .refine import fit_refinement
from .scores import Scores, summarise
from .stage1_baselines import load_baselines


class _LazyRows:
    """table[index[i]] gathered on indexing, so [n, d] router inputs are never materialised."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        self.table, self.index = table, index

    def __getitem__(self, idx) -> torch.Tensor:
        return self.table[self.index[idx]]


def resolve_head_input(config: AdaptConfig, metas: list[dict], notes: list[str]) -> bool:
    """Whether the heads score (context + prompt, response) embeddings: 'context' demands them of every
    cache, 'auto' takes them when every cache has them."""
    have = all(m.get("context_in_sequence") for m in metas)
    if config.head_input == "context" and not have:
        raise CacheError("head_input 'context' needs caches built with `micro embed --context-in-sequence`; "
                         "rebuild the cache(s) with it or use --head-input response.")
    if config.head_input == "auto":
        notes.append("heads score (context + prompt, response) embeddings (section 5.3)." if have else
                     "the cache has no (context + prompt, response) embeddings: heads score (prompt, response) "
                     "embeddings (build it with `micro embed --context-in-sequence` for the paper's reading).")
    return config.head_input == "context" or (config.head_input == "auto" and have)


def run_adapt(cache: str | Path, run_dir: str | Path, out: str | Path, config: AdaptConfig | None = None, *,
              log: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Adapt RUN_DIR's router to the contexts of CACHE over config.budgets x config.seeds and score
    every method on the (eval) cache's test split. Writes OUT/{results.json, results.csv, table.md,
    budget_curve.png, routers/, baselines/} and returns the results dict.

    OUT is built in a temporary sibling folder and renamed into place when complete (its baselines/ are
    carried over and reused); an existing non-empty OUT is refused, naming what differs, unless `overwrite`.
    """
    config = config or AdaptConfig()
    out = Path(out)
    refuse = lambda: refuse_existing(out, "adapt results", _adapt_differences(out, cache, run_dir, config))  # noqa: E731
    with writing_dir(out, overwrite=overwrite, what="adapt folder", inputs=[cache, run_dir, config.eval_cache, *config.baseline_runs],
                     keep=("baselines",), existing=refuse) as tmp:
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
    cache, run_dir, out = Path(cache), Path(run_dir), Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    model, run_config = load_run(run_dir)
    model = model.eval()
    model.mask_heads(config.mask_heads)
    mix_config = MixtureConfig.from_dict(run_config.get("config", run_config))
    if model.router is None:
        raise ValueError(f"{run_dir} is a {mix_config.method!r} run without a router; stage 2 adapts a `micro` run.")
    meta = read_meta(cache)
    check_cache_matches(run_config, meta, cache)
    notes: list[str] = []
    try:
        check_same_table(run_config.get("cache", {}), meta, what=f"the run {run_dir}", path=cache)
    except CacheError as exc:
        if not config.cross_dataset:
            raise CacheError(f"{exc} For the cross-dataset setting (paper Table 4) pass --cross-dataset.") from None
        notes.append(f"cross-dataset: {cache} holds another table than the run's stage-1 cache.")
    eval_path = Path(config.eval_cache) if config.eval_cache else cache
    eval_meta = read_meta(eval_path) if config.eval_cache else meta
    if config.eval_cache:
        check_cache_matches(run_config, eval_meta, eval_path)
    if "train" not in meta["splits"]:
        raise CacheError(f"cache {cache} has no 'train' split to draw the budget pairs from.")
    if "test" not in eval_meta["splits"]:
        raise CacheError(f"cache {eval_path} has no 'test' split to evaluate on.")
    has_eval_train = "train" in eval_meta["splits"]
    augmented = resolve_head_input(config, [meta, eval_meta], notes)
    device = torch.device(config.device)
    train = load_split(cache, "train", context_in_sequence=augmented)
    test = load_split(eval_path, "test", context_in_sequence=augmented)
    if config.eval_cache:
        if has_eval_train:
            eval_train = load_split(eval_path, "train", context_in_sequence=augmented)
        else:
            eval_train = None
            notes.append(f"{eval_path} has no train split: budget-bt, oracle and micro-refine are omitted.")
    else:
        eval_train = train
    require_contexts(train, "stage 2")
    train_inputs = _LazyRows(train.context_embedding, train.context_index)  # rows gathered only for drawn pairs
    test_inputs = test.context_inputs()
    check_budgets(train, config.budgets, str(cache))
    if eval_train is not None and eval_train is not train:
        require_contexts(eval_train, "stage 2")
        eval_train_inputs = _LazyRows(eval_train.context_embedding, eval_train.context_index)
        check_budgets(eval_train, config.budgets, str(eval_path))
    else:
        eval_train_inputs = train_inputs
    timings["load"] = time.perf_counter() - t0

    # -- frozen margins, once ---------------------------------------------------------------------
    with torch.no_grad():
        # masked heads: infinite loss, so the Hedge labels give them no mass (the router adapts with the mask)
        train_margins = model.head_margins(train.diff)  # [n_train, K]
        train_losses = head_losses(train_margins).masked_fill(model.head_mask, float("inf"))
        test_margins = model.head_margins(test.diff)  # [n_test, K]
        kept_margins = test_margins[:, ~model.head_mask]  # the heads the best-head / HyRe baselines may pick
    base_models = (load_baselines(run_dir, run_config, config.baseline_runs, cache, meta, None if augmented else train, out, log)
                   if config.baselines else {})
    timings["baselines_fit"] = time.perf_counter() - t0 - timings["load"]

    seeds = config.seed_values
    shots = {s: draw_shots(test, s, config.hyre_shots) for s in seeds}
    scores = Scores(test=test, shots=shots)
    test_rows = scores.rows
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
        eval_rows = attribute_rows(eval_train)
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
            rows = test_rows[a]
            fixed.append(("stage1-best", s, a, float((kept_margins[rows] > 0).float().mean(0).max())))
            hyre_rows = scores.eval_rows("micro-hyre", s, a)
            w = hyre_weights(kept_margins[shots[s][a]], config.hyre_variant)
            fixed.append(("micro-hyre", s, a, float((hyre_margins(kept_margins[hyre_rows], w) > 0).float().mean())))
            if base_models:
                fixed.append(("ensemble-best", s, a, float((ens[rows] > 0).float().mean(0).max())))
                w = hyre_weights(ens[shots[s][a]], config.hyre_variant)
                fixed.append(("hyre", s, a, float((hyre_margins(ens[hyre_rows], w) > 0).float().mean())))
        if oracle_margins is not None:
            fixed.append(("oracle", s, None, oracle_margins))
    timings["fixed_baselines"] = time.perf_counter() - t

    # -- per budget: (acquire pairs,) adapt routers (all seeds at once), budget-bt, micro-refine, drm, lore ---
    timings["adapt"] = timings["budget_bt"] = timings["refine"] = timings["evaluate"] = timings["peers"] = 0.0
    t = time.perf_counter()
    drm = drm_heads(train.diff, config.drm_components)  # peers (micro.router.peers): fitted once on the train split
    lore = fit_lore(train.diff, train.attribute, config.lore_rank, steps=config.lore_steps, lr=config.lore_lr, seed=config.seed)
    timings["peers"] += time.perf_counter() - t

    def adapt(draws: list[dict], history: list | None = None) -> list:
        idx = torch.as_tensor(np.stack([np.concatenate([d[a] for a in sorted(d)]) for d in draws]))  # [S, A*B]
        return adapt_routers(
            model.router, train_inputs[idx].to(device), train_losses[idx].to(device), seeds,
            tau=config.tau, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            weight_decay=config.weight_decay, min_steps=config.router_min_steps, history=history,
        )

    def context_weights(draws: list[dict]) -> dict[str, torch.Tensor]:
        """{attribute name: [S, K]} Hedge log-weights of each context over its budget pairs (context_rate)."""
        attrs = sorted(draws[0])
        idx = torch.as_tensor(np.stack([np.stack([d[a] for a in attrs]) for d in draws]))  # [S, A, B]
        table = context_log_weights(train_losses[idx], config.context_rate)  # [S, A, K]
        return {train.attributes[a]: table[:, j] for j, a in enumerate(attrs)}

    def informativeness(draws: list[dict]) -> list:  # active acquisition (micro.router.acquire)
        score = SCORES[config.acquire]
        return [lambda rows, m=EmbeddingRewardModel(model, r): score(m.weights(train_inputs[rows]), train_margins[rows])
                for r in adapt(draws)]

    t = time.perf_counter()
    asked, at_random = acquire_pairs(config.acquire, train, seeds, config.budgets, config.acquire_batch, config.acquire_random,
                                     informativeness, with_random_mask=True)  # {budget: draws}, nested across budgets
    timings["acquire"] = time.perf_counter() - t
    # micro-refine's prior: the first refine_prior_pairs training pairs of each context in the seed's order (no labels)
    prior_rows = ([draw_budget_pairs(eval_train, s, config.refine_prior_pairs) for s in seeds]
                  if eval_train is not None and config.refine_prior_pairs else None)
    for budget in config.budgets:
        draws = asked[budget]
        t = time.perf_counter()
        history: list = []
        routers = adapt(draws, history)
        by_context = context_weights(draws) if config.context_rate > 0 else {}
        timings["adapt"] += time.perf_counter() - t

        def log_weights(split, attribute_ids: torch.Tensor, i: int) -> torch.Tensor | None:
            """[n, K] router R_i's context log-weights of each row's attribute (0 where none), or None."""
            if not by_context:
                return None
            table = torch.stack([by_context[name][i] if name in by_context else torch.zeros(model.k) for name in split.attributes])
            return table[attribute_ids]

        t = time.perf_counter()
        adapted = [EmbeddingRewardModel(model, r) for r in routers]
        for i, (s, m) in enumerate(zip(seeds, adapted)):
            scores.add("micro", budget, s, (m.weights(test_inputs, log_weights(test, test.attribute, i)) * test_margins).sum(-1))
        timings["evaluate"] += time.perf_counter() - t

        refine_heads = {}
        if eval_train is not None:
            eval_draws = draws if eval_train is train else [draw_budget_pairs(eval_train, s, budget) for s in seeds]
            eval_attrs = [a for a in attr_ids if a in eval_draws[0]]
            budget_rows = torch.as_tensor(np.stack([np.stack([d[a] for a in eval_attrs]) for d in eval_draws]))  # [S, A', B]
            diff = eval_train.diff[budget_rows.reshape(-1)].reshape(len(seeds) * len(eval_attrs), budget, -1)
            # micro-refine's correction is fitted on the pairs drawn at random (all of them unless a rule asked)
            fit_on = (torch.as_tensor(np.stack([np.stack([d[a] for a in eval_attrs]) for d in at_random[budget]])).reshape(-1, budget)
                      if eval_train is train else None)
            t = time.perf_counter()
            groups = torch.arange(len(seeds)).repeat_interleave(len(eval_attrs))  # problem -> seed (pooled-loo)
            bt = fit_budget_bt(diff, config.refine_grid, select=config.refine_select, groups=groups)
            bt_heads = bt.delta.reshape(len(seeds), len(eval_attrs), -1)
            timings["budget_bt"] += time.perf_counter() - t
            t = time.perf_counter()
            drm_w, drm_scale = drm_weights(diff @ drm.T, config.drm_temperature)  # [S*A', 2m] each
            lore_w = fit_lore_users(lore, diff, steps=config.lore_steps, lr=config.lore_lr)  # [S*A', r]
            timings["peers"] += time.perf_counter() - t
            t = time.perf_counter()
            # The prior of each context's head is ONE vector: the stage-1 heads mixed by micro's weights (the
            # adapted router's, times the context's Hedge factor) averaged over the context's first
            # refine_prior_pairs training pairs (prompts only), or over its budget pairs. (Per-pair routed margins on the very pairs the router was trained on fit them
            # in-sample, and cross-validation then trusts a prior that fails on test pairs; an average of K
            # weights carries the context's routing without that leak.)
            with torch.no_grad():
                if prior_rows:
                    mean_weights = [torch.stack([m.weights(eval_train_inputs[prior_rows[i][a]],
                                                           log_weights(eval_train, torch.full((len(prior_rows[i][a]),), a), i)).mean(0)
                                                 for a in eval_attrs])
                                    for i, m in enumerate(adapted)]
                else:
                    mean_weights = [m.weights(eval_train_inputs[budget_rows[i].reshape(-1)],
                                              log_weights(eval_train, eval_train.attribute[budget_rows[i].reshape(-1)], i)
                                              ).reshape(len(eval_attrs), budget, -1).mean(1)
                                    for i, m in enumerate(adapted)]
                prior_heads = torch.stack([w @ model.head_vectors() for w in mean_weights])  # [S, A', d]
                prior = (diff @ prior_heads.reshape(len(seeds) * len(eval_attrs), -1, 1)).squeeze(-1)  # [S*A', B]
            ref = fit_refinement(diff, prior, config.refine_grid, scale_precision=config.refine_scale_precision,
                                 select=config.refine_select, groups=groups, fit_on=fit_on,
                                 keep_prior_se=config.refine_keep_prior_se)
            heads_refined = (ref.scale.reshape(len(seeds), len(eval_attrs), 1) * prior_heads
                             + ref.delta.reshape(len(seeds), len(eval_attrs), -1))  # [S, A', d]
            timings["refine"] += time.perf_counter() - t
            for i, s in enumerate(seeds):
                bt_m, ref_m, drm_m, lore_m = (torch.zeros(len(test)) for _ in range(4))
                for j, a in enumerate(eval_attrs):
                    rows, u = test_rows[a], i * len(eval_attrs) + j
                    bt_m[rows] = test.diff[rows] @ bt_heads[i, j]
                    ref_m[rows] = test.diff[rows] @ heads_refined[i, j]
                    drm_m[rows] = drm_margins(test.diff[rows], drm, drm_w[u], drm_scale[u])
                    lore_m[rows] = lore.margins(test.diff[rows], lore_w[u])
                for name, margins in (("budget-bt", bt_m), ("micro-refine", ref_m), ("drm", drm_m), ("lore", lore_m)):
                    scores.add(name, budget, s, margins, eval_attrs)
                refine_heads[s] = {"head": heads_refined[i], "attributes": [test.attributes[a] for a in eval_attrs],
                                   "scale": ref.scale.reshape(len(seeds), len(eval_attrs))[i].tolist(),
                                   "precision": ref.precision.reshape(len(seeds), len(eval_attrs))[i].tolist()}

        for method, s, a, value in fixed:
            if a is None:
                scores.add(method, budget, s, value)
            else:
                scores.add_value(method, budget, s, a, value)

        if config.save_routers:
            for i, (s, r) in enumerate(zip(seeds, routers)):
                refined = refine_heads.get(s)
                info = {"budget": budget, "seed": s, "tau": config.tau, "epochs": config.epochs, "lr": config.lr,
                        "head_input": "context" if augmented else "response",
                        "run_dir": str(run_dir.resolve()), "cache": str(cache.resolve()), "attributes": list(train.attributes),
                        "masked_heads": model.masked_heads,
                        "label_entropy_last_epoch": history[-1]["label_entropy"] if history else None,
                        "context_rate": config.context_rate,
                        # masked heads' -inf is stored as 0: the router's own mask (masked_heads) removes them
                        "context_log_weights": {name: [round(float(v), 6) if math.isfinite(v) else 0.0 for v in w[i].tolist()]
                                                for name, w in by_context.items()} or None,
                        "refine_precision": refined["precision"] if refined else None,
                        "refine_prior_scale": refined["scale"] if refined else None}
                save_router(out / "routers" / f"b{budget}_s{s}.safetensors", r, info,
                            refine={k: refined[k] for k in ("head", "attributes")} if refined else None)

    if config.acquire != "random" and eval_train is not None and eval_train is not train:
        notes.append(f"--acquire {config.acquire} chooses the adapt cache's pairs; the eval cache's budget pairs are the seeded random draw.")
    for r in scores.records:
        r["acquire"] = config.acquire
    attributes = [test.attributes[a] for a in attr_ids]
    timings["total"] = time.perf_counter() - t0
    inputs = {  # what the results were computed from, by content: a moved file keeps its run id
        "cache_sha256": meta.get("source_sha256"),
        "eval_cache_sha256": eval_meta.get("source_sha256"),
        "run_model_sha256": _file_sha256(run_dir / "model.safetensors"),
    }
    results = {
        "run_id": hashlib.sha256(json.dumps({**inputs, "config": config.to_dict()}, sort_keys=True).encode()).hexdigest()[:12],
        "cache": str(cache.resolve()),
        "eval_cache": str(eval_path.resolve()),
        "run_dir": str(run_dir.resolve()),
        "inputs": inputs,
        "config": config.to_dict(),
        "stage1_config": mix_config.to_dict(),
        "head_input": "context" if augmented else "response",
        "acquire": config.acquire,
        "attributes": attributes,
        "methods": [m for m in METHODS if any(r["method"] == m for r in scores.records)],
        "test_pairs": {test.attributes[a]: int(len(test_rows[a])) for a in attr_ids},
        "hyre_shots": {test.attributes[a]: int(len(shots[seeds[0]][a])) for a in attr_ids},
        "records": scores.records,
        "summary": summarise(scores.records, attributes),
        "notes": notes,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    from .report import write_outputs

    results["files"] = write_outputs(results, out, plot=config.plot)
    return results


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
