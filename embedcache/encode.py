"""Text to embeddings with the cache's own conventions, for scoring new text.

`micro embed` and the text scorer share this path: the plan (`build_plan`: render, tokenize, truncate,
deduplicate), the token-budget batches (`make_batches`) and one padded forward per batch
(`forward_jobs`, which the cache runner calls too). So an embedding computed here for a (prompt,
response) or a (context + prompt) equals the cache's row for the same text, up to the cache's float16
storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .backbone import Backbone
from .config import EmbedConfig
from .batches import make_batches
from .plan import CTX_PROMPT, PROMPT, SEQ, Plan, build_plan


def outputs_by_job(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): outputs sorted by job; job j gives outputs order[starts[j]:starts[j + 1]]."""
    order = np.argsort(plan.out_job, kind="stable")
    starts = np.searchsorted(plan.out_job[order], np.arange(plan.n_jobs + 1))
    return order, starts


def forward_jobs(bb: Backbone, plan: Plan, jobs: np.ndarray, order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run one batch of jobs through the backbone: (output indices into the plan, float32 [outputs, d])."""
    ids = [plan.ids[j] for j in jobs]
    types = [plan.type_ids[j] for j in jobs] if plan.type_ids is not None else None
    outs = np.concatenate([order[starts[j] : starts[j + 1]] for j in jobs])
    local = np.searchsorted(np.sort(jobs), plan.out_job[outs])  # position of each output's job in `jobs`
    owners = np.argsort(jobs)[local]
    return outs, bb.forward(ids, types, plan.out_pos[outs], owners)


@dataclass
class TextEmbeddings:
    """Embeddings of scored rows, one per row (rows repeated in the input are computed once)."""

    sequence: np.ndarray  # [n, d] (prompt, response): what the heads score
    prompt: np.ndarray | None  # [n, d] router input of the prompt (the cache's /prompts)
    context_prompt: np.ndarray | None  # [n, d] router input of (context + prompt); the prompt's where no context
    truncated: dict[str, int]


def row_table(prompts: Sequence[Any], responses: Sequence[str], contexts: Sequence[str | None] | None = None) -> pd.DataFrame:
    """Rows to score as a preference table whose two responses are the same text (what `build_plan` reads)."""
    n = len(prompts)
    if len(responses) != n or (contexts is not None and len(contexts) != n):
        lengths = f"{n} prompts, {len(responses)} responses" + ("" if contexts is None else f", {len(contexts)} contexts")
        raise ValueError(f"prompts, responses and contexts must have the same length; got {lengths}")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise ValueError(f"response {i} is {type(r).__name__}, not text")
    col = lambda values: pd.Series(list(values), dtype=object)  # noqa: E731  (keeps conversations as lists)
    return pd.DataFrame({"prompt": col(prompts), "chosen": col(responses), "rejected": col(responses),
                         "context": col(contexts if contexts is not None else [None] * n)})


def embed_texts(
    bb: Backbone,
    prompts: Sequence[Any],
    responses: Sequence[str],
    contexts: Sequence[str | None] | None = None,
    *,
    router_input: str | None = "context",
    batch_tokens: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TextEmbeddings:
    """Embed (prompt, response) rows exactly as `micro embed` would, plus the router inputs asked for.

    router_input: None (no router input), 'prompt' (the prompt's embedding) or 'context' (the (context +
    prompt) embedding, which is the prompt's where a row has no context). Only the forward passes that
    give the wanted embeddings run. on_batch(sequences in the batch, sequences in all) is called after
    each batch (progress bars).
    """
    if router_input not in (None, "prompt", "context"):
        raise ValueError(f"router_input must be None, 'prompt' or 'context', not {router_input!r}")
    n = len(prompts)
    d = int(bb.hidden_size)
    if n == 0:
        empty = np.zeros((0, d), dtype=np.float32)
        return TextEmbeddings(empty, empty if router_input else None, empty if router_input == "context" else None, {})
    plan = build_plan(row_table(prompts, responses, contexts), bb)
    groups = [SEQ] + ([PROMPT] if router_input else []) + ([CTX_PROMPT] if router_input == "context" else [])
    wanted = np.isin(plan.out_group, groups)
    jobs = np.unique(plan.out_job[wanted])
    batches = make_batches(plan.lengths, int(batch_tokens or EmbedConfig().batch_tokens_for(bb.device.type)), jobs)
    tables = {g: np.zeros((plan.n_rows(g), d), dtype=np.float32) for g in groups}
    order, starts = outputs_by_job(plan)
    for batch in batches:
        outs, emb = forward_jobs(bb, plan, batch, order, starts)
        for g in groups:
            sel = plan.out_group[outs] == g
            tables[g][plan.out_row[outs][sel]] = emb[sel]
        if on_batch is not None:
            on_batch(len(batch), len(jobs))
    pairs = plan.pairs
    prompt = tables[PROMPT][pairs["prompt"]] if router_input else None
    context_prompt = None
    if router_input == "context":
        context_prompt = prompt.copy()
        has = pairs["context_prompt"] >= 0
        context_prompt[has] = tables[CTX_PROMPT][pairs["context_prompt"][has]]
    return TextEmbeddings(tables[SEQ][pairs["chosen"]], prompt, context_prompt, dict(plan.stats))

