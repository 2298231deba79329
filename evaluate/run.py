"""`run_eval`: score a stage-1 run (every head, the routed mixture, the single baseline) and optionally an
adapted router on any preference source; RewardBench section scores when the subsets are RewardBench's.

Read top to bottom: load the run (mask applied) -> embed the source through its backbone (reusable cache)
-> margins of every method on every pair -> accuracy per subset, pooled and averaged -> RewardBench
sections -> results.json / results.csv / table.md (+ rewardbench/<method>.json leaderboard records).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..embedcache import CacheError, CacheSplit, load_texts
from ..heads import load_run
from ..heads.model import MixtureRewardModel, load_model
from ..outputs import output_files
from ..router import load_adapted, load_router
from . import rewardbench
from .config import EvalConfig
from .source import is_cache, load_pairs, prepare_cache, router_inputs

SINGLE, ROUTED, ADAPTED = "single", "routed", "adapted"


def head_name(k: int) -> str:
    return f"head-{k}"


def find_single(run_dir: str | os.PathLike, run_config: dict) -> Path | None:
    """A sibling `--method single` run of RUN_DIR trained on the same cache, if there is one."""
    run_dir = Path(run_dir).resolve()
    for cfg_path in sorted(run_dir.parent.glob("*/config.json")):
        if cfg_path.parent == run_dir or not (cfg_path.parent / "model.safetensors").exists():
            continue
        try:
            sib = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            continue
        if sib.get("config", {}).get("method") == "single" and sib.get("cache") == run_config.get("cache"):
            return cfg_path.parent
    return None


def load_masked_run(run_dir: str | os.PathLike, mask_heads: list[int]) -> tuple[MixtureRewardModel, dict]:
    model, run_config = load_run(run_dir)
    return model.mask_heads(mask_heads).eval(), run_config


def attribute_context(router_meta: dict, attribute: str) -> str:
    """The context text of `attribute` in the cache a router was adapted on (its most frequent one)."""
    cache = router_meta.get("cache")
    if not cache or not Path(cache).exists():
        raise FileNotFoundError(f"the router's adapt cache {cache!r} is not there to read attribute {attribute!r}'s context; give --context TEXT")
    texts = load_texts(cache)
    rows = texts[(texts["attribute"] == attribute) & texts["context"].notna()]
    if rows.empty:
        have = sorted(set(texts["attribute"]))
        raise ValueError(f"--attribute {attribute!r}: the router's cache {cache} has no pairs with a context for it; it has {have}")
    return Counter(rows["context"]).most_common(1)[0][0]


@torch.no_grad()
def score_pairs(model: MixtureRewardModel, split: CacheSplit, router_input: str, *, single: MixtureRewardModel | None = None,
                adapted=None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """{method: [n] margins} for every head, the routed mixture (K > 1), the single baseline and the
    adapted router (when given), and notes on how the routed mixture was fed."""
    notes = []
    margins: dict[str, torch.Tensor] = {}
    if single is not None:
        margins[SINGLE] = single.head_margins(split.diff)[:, 0]
    head = model.head_margins(split.diff)
    if model.k > 1:
        inputs, fallback = router_inputs(split, router_input)
        if fallback:
            notes.append(f"the run's router reads (context + prompt) embeddings but {fallback} of {len(split)} pairs have "
                         "no context: it routed those on the prompt embedding alone (give --context to route with one)")
        margins[ROUTED] = (model.log_weights(inputs).exp() * head).sum(-1)
    if adapted is not None:
        margins[ADAPTED] = adapted.margins(split.diff, split.context_inputs())
    for k in range(model.k):
        margins[head_name(k)] = head[:, k]
    return margins, notes


def accuracy_table(margins: dict[str, torch.Tensor], subsets: np.ndarray) -> dict:
    """{"subsets": {name: {"n", "accuracy": {method: acc}}}, "overall": pooled over pairs, "average":
    unweighted mean over subsets}. A pair is right when its margin is > 0 (ties count wrong)."""
    correct = {m: np.asarray(v > 0) for m, v in margins.items()}
    names = list(dict.fromkeys(subsets.tolist()))
    per = {}
    for name in names:
        rows = subsets == name
        per[name] = {"n": int(rows.sum()), "accuracy": {m: float(c[rows].mean()) for m, c in correct.items()}}
    overall = {"n": int(len(subsets)), "accuracy": {m: float(c.mean()) for m, c in correct.items()}}
    average = {m: float(np.mean([per[s]["accuracy"][m] for s in names])) for m in correct}
    return {"subsets": per, "overall": overall, "average": average}


def run_eval(run_dir: str | os.PathLike, source: Any, out: str | os.PathLike, config: EvalConfig | None = None, *,
             source_name: str | None = None, log: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Score RUN_DIR on SOURCE (a preference table, or a finished cache path) and write OUT/results.json,
    results.csv, table.md (and OUT/rewardbench/*.json for RewardBench subsets). Returns the results.

    The files join OUT beside anything else there (micro.outputs.output_files): an existing one is
    replaced only with `overwrite`."""
    config = config or EvalConfig()
    log = log or (lambda msg: None)
    out = Path(out)
    router_meta = None
    mask = list(config.mask_heads)
    if config.router:
        _, router_meta = load_router(config.router)
        mask = sorted(set(mask) | set(router_meta.get("masked_heads") or []))
    model, run_config = load_masked_run(run_dir, mask)
    context = config.context
    if config.attribute is not None:
        context = attribute_context(router_meta, config.attribute)
    no_context = CacheError("an adapted router routes on (context + prompt): give --context TEXT or --attribute A "
                            "(or a source whose every pair has a context)")
    if config.router and context is None and not is_cache(source) and source["context"].isna().any():
        raise no_context  # before any embedding
    cache = prepare_cache(run_config, source, config.cache or out / "cache.h5", context=context,
                          device=config.device, batch_tokens=config.batch_tokens, log=log)
    split = load_pairs(cache)

    single_dir = find_single(run_dir, run_config) if run_config["config"].get("method") != "single" else None
    single = load_model(single_dir)[0].eval() if single_dir else None
    adapted, known = None, False
    if config.router:
        # an attribute the router was adapted with is scored as `micro adapt` scores it: the router's weights
        # times the attribute's Hedge weights over its budget pairs (saved with the router)
        known = config.attribute is not None and config.attribute in (router_meta.get("context_log_weights") or {})
        adapted = load_adapted(run_dir, config.router, attribute=config.attribute if known else None, refined=False)
        adapted.router.mask_heads(mask)
        if not split.has_context or bool((split.context_index < 0).any()):
            raise no_context
    router_input = run_config["config"].get("router_input", "prompt")
    margins, notes = score_pairs(model, split, router_input, single=single, adapted=adapted)
    subsets = np.asarray(split.attributes, dtype=object)[split.attribute.numpy()]
    table = accuracy_table(margins, subsets)

    model_name = Path(run_dir).resolve().name
    results = {
        "run_dir": str(run_dir),
        "source": source_name or (str(source) if isinstance(source, (str, os.PathLike)) else "table"),
        "cache": str(cache),
        "config": {**config.to_dict(), "mask_heads": mask, "context": context, "router_input": router_input,
                   "single_run": str(single_dir) if single_dir else None,
                   "attribute_hedge_weights": known},
        "stage1_config": run_config["config"],
        "methods": list(margins),
        **table,
        "notes": notes,
    }
    if rewardbench.is_rewardbench(table["subsets"]):
        template = run_config["cache"].get("template") or "none"
        template = template if template in ("none", "pair") else "tokenizer"  # reward-bench's word for a model's own
        results["rewardbench"] = {
            m: rewardbench.rewardbench_scores({s: v["accuracy"][m] for s, v in table["subsets"].items()},
                                              f"micro/{model_name}/{m}", chat_template=template)
            for m in margins
        }
    from .report import EVAL_FILES, write_outputs

    inputs = [run_dir, source if isinstance(source, (str, os.PathLike)) else None, config.router]
    with output_files(out, EVAL_FILES, overwrite=overwrite, what="evaluation", inputs=inputs) as tmp:
        results["files"] = write_outputs(results, tmp, final=out)
    return results
