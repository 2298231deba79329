"""The embedding plan: every distinct sequence of a preference table, tokenized and truncated once.

A *job* is one forward pass over one token sequence; an *output* is one embedding read from a job
(group, row, token position). Decoders read two outputs from one (prompt, response) pass: the response
end (a /sequences row) and, causal attention making it independent of the response, the prompt end
(a /prompts row). Encoders pool the whole sequence, so every output is its own job.

Truncation keeps the response: over `max_length`, the prompt is cut from its start (the turn nearest
the response survives; the template's leading special tokens stay), and the response only when it alone
does not fit, keeping its first tokens and the template's closing tokens (e.g. <|eot_id|>).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GROUPS = ("sequences", "prompts", "context_prompts", "context_sequences")
SEQ, PROMPT, CTX_PROMPT, CTX_SEQ = range(4)
#: Minimum prompt tokens kept next to a response that alone is longer than the budget.
MIN_PROMPT_TOKENS = 16


def _context(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = str(value)
    return value if value.strip() else None


def _prompt_key(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return json.dumps([{"role": str(m["role"]), "content": str(m["content"])} for m in list(prompt)])


@dataclass
class Plan:
    """Jobs (token sequences) and outputs (embeddings), plus the cache tables they fill."""

    ids: list[np.ndarray]
    type_ids: list[np.ndarray] | None
    lengths: np.ndarray  # [jobs]
    out_job: np.ndarray  # [outputs] job giving the output
    out_group: np.ndarray  # [outputs] SEQ / PROMPT / CTX_PROMPT / CTX_SEQ
    out_row: np.ndarray  # [outputs] row in that group
    out_pos: np.ndarray  # [outputs] token position (decoders); -1 = pooled
    prompt_text: list[str]
    seq_prompt: np.ndarray
    seq_text: list[str]
    contexts: list[str]
    cp_prompt: np.ndarray
    cp_context: np.ndarray
    cs_cp: np.ndarray
    cs_text: list[str]
    pairs: dict[str, np.ndarray]
    attributes: list[str]
    splits: list[str]
    context_in_sequence: bool
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_jobs(self) -> int:
        return len(self.ids)

    def n_rows(self, group: int) -> int:
        return [len(self.seq_text), len(self.prompt_text), len(self.cp_prompt), len(self.cs_text)][group]

    def keys(self, group: int) -> list:
        """Text keys of a group's rows, for reusing embeddings of an earlier cache of the same backbone."""
        if group == SEQ:
            return [(self.prompt_text[p], t) for p, t in zip(self.seq_prompt, self.seq_text)]
        if group == PROMPT:
            return list(self.prompt_text)
        cp = [(self.contexts[c], self.prompt_text[p]) for p, c in zip(self.cp_prompt, self.cp_context)]
        if group == CTX_PROMPT:
            return cp
        return [cp[q] + (t,) for q, t in zip(self.cs_cp, self.cs_text)]

    def fingerprint(self) -> str:
        """sha256 of everything the model will see and where each embedding goes."""
        h = hashlib.sha256()
        for arr in (self.lengths, self.out_job, self.out_group, self.out_row, self.out_pos):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        if self.ids:
            h.update(np.concatenate(self.ids).astype(np.int64).tobytes())
        if self.type_ids:
            h.update(np.concatenate(self.type_ids).astype(np.int64).tobytes())
        return h.hexdigest()

    def references(self) -> int:
        """(prompt, response) references made by the pairs: two per pair (chosen, rejected)."""
        return 2 * len(self.pairs["chosen"])


class _Builder:
    def __init__(self, backbone, max_length: int):
        self.bb = backbone
        self.M = max_length
        self.tok = backbone.tokenizer
        self.special = set(self.tok.all_special_ids)
        self.ids: list[np.ndarray] = []
        self.type_ids: list[np.ndarray] = []
        self.outputs: list[tuple[int, int, int, int]] = []
        self.stats = {"truncated_prompts": 0, "truncated_responses": 0, "truncated_router_inputs": 0}
        self._tail_cache: dict[str, int] = {}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def lead(self, ids: list[int]) -> int:
        n = 0
        while n < len(ids) and ids[n] in self.special:
            n += 1
        return min(n, max(len(ids) - 1, 0))

    def tail(self, part: str, response: str) -> int:
        """Tokens of the template's closing text after the response content (kept when a response is cut)."""
        content = response.strip()
        at = part.rfind(content) if content else -1
        closing = part[at + len(content) :] if at >= 0 else ""
        if closing not in self._tail_cache:
            self._tail_cache[closing] = len(self.tokenize([closing])[0]) if closing else 0
        return self._tail_cache[closing]

    def add(self, ids: list[int], types: list[int] | None, outputs: list[tuple[int, int, int]]) -> None:
        job = len(self.ids)
        self.ids.append(np.asarray(ids, dtype=np.int32))
        if types is not None:
            self.type_ids.append(np.asarray(types, dtype=np.int8))
        for group, row, pos in outputs:
            self.outputs.append((job, group, row, pos))

    # -- truncation ---------------------------------------------------------------------------------
    @staticmethod
    def keep_end(ids: list[int], n: int, lead: int = 0) -> list[int]:
        """The first `lead` tokens + the last n - lead tokens (cut from the start, after the lead)."""
        if len(ids) <= n:
            return ids
        rest = max(n - lead, 0)
        return ids[:lead] + (ids[len(ids) - rest :] if rest else [])

    def fit(self, p: list[int], r: list[int], budget: int, lead: int, n_tail: int) -> tuple[list[int], list[int]]:
        if len(p) + len(r) <= budget:
            return p, r
        reserve = min(len(p), max(lead + MIN_PROMPT_TOKENS, budget // 8))
        if len(r) <= budget - reserve:
            self.stats["truncated_prompts"] += 1
            return self.keep_end(p, budget - len(r), lead), r
        if len(p) > reserve:
            self.stats["truncated_prompts"] += 1
        self.stats["truncated_responses"] += 1
        pk = self.keep_end(p, reserve, lead)
        room = budget - len(pk)
        n_tail = min(n_tail, room)
        return pk, r[: room - n_tail] + (r[len(r) - n_tail :] if n_tail else [])


def build_plan(table, backbone, *, context_in_sequence: bool = False) -> Plan:
    """Deduplicate a preference table into distinct prompts, sequences, contexts and jobs for `backbone`."""
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in table.columns]
    if missing:
        raise ValueError(f"preference table lacks column(s) {missing}; it needs prompt, chosen, rejected")
    n = len(table)
    raw_prompts = table["prompt"].tolist()
    chosen = [str(x) for x in table["chosen"].tolist()]
    rejected = [str(x) for x in table["rejected"].tolist()]
    attr_col = table["attribute"].tolist() if "attribute" in table.columns else [""] * n
    ctx_col = [_context(x) for x in table["context"].tolist()] if "context" in table.columns else [None] * n
    split_col = table["split"].tolist() if "split" in table.columns else ["train"] * n
    attributes = list(dict.fromkeys("" if a is None else str(a) for a in attr_col))
    splits = list(dict.fromkeys(str(s) for s in split_col))
    attr_id = {a: i for i, a in enumerate(attributes)}
    split_id = {s: i for i, s in enumerate(splits)}

    # distinct prompts, contexts, (context, prompt), sequences, context sequences -- first-appearance order
    key_row: dict[str, int] = {}
    rendered_row: dict[str, int] = {}
    prompt_text: list[str] = []
    prompt_raw: list[Any] = []
    contexts: dict[str, int] = {}
    cps: dict[tuple[int, int], int] = {}
    seqs: dict[tuple[int, str], int] = {}
    css: dict[tuple[int, str], int] = {}
    pair = {k: np.full(n, -1, dtype=np.int64) for k in ("chosen", "rejected", "prompt", "context_prompt", "chosen_context", "rejected_context", "attribute", "context", "split")}
    for i in range(n):
        key = _prompt_key(raw_prompts[i])
        p = key_row.get(key)
        if p is None:
            text = backbone.render_prompt(raw_prompts[i])
            p = rendered_row.setdefault(text, len(prompt_text))
            if p == len(prompt_text):
                prompt_text.append(text)
                prompt_raw.append(raw_prompts[i])
            key_row[key] = p
        pair["prompt"][i] = p
        pair["chosen"][i] = seqs.setdefault((p, chosen[i]), len(seqs))
        pair["rejected"][i] = seqs.setdefault((p, rejected[i]), len(seqs))
        pair["attribute"][i] = attr_id["" if attr_col[i] is None else str(attr_col[i])]
        pair["split"][i] = split_id[str(split_col[i])]
        c = ctx_col[i]
        if c is not None:
            cid = contexts.setdefault(c, len(contexts))
            q = cps.setdefault((p, cid), len(cps))
            pair["context"][i], pair["context_prompt"][i] = cid, q
            if context_in_sequence:
                pair["chosen_context"][i] = css.setdefault((q, chosen[i]), len(css))
                pair["rejected_context"][i] = css.setdefault((q, rejected[i]), len(css))

    context_list = list(contexts)
    cp_list = list(cps)
    seq_list = list(seqs)
    cs_list = list(css)
    b = _Builder(backbone, backbone.max_length)
    p_ids = b.tokenize(prompt_text)
    cp_text = [backbone.render_prompt(prompt_raw[p], context_list[c]) for p, c in cp_list]
    cp_ids = b.tokenize(cp_text)

    def parts(rows, base_raw, base_ctx, base_text):
        texts = [backbone.render_response(base_raw(k), base_ctx(k), base_text(k), resp) for k, resp in rows]
        return texts, b.tokenize(texts)

    seq_parts, seq_ids = parts(seq_list, lambda p: prompt_raw[p], lambda p: None, lambda p: prompt_text[p])
    cs_parts, cs_ids = parts(
        cs_list,
        lambda q: prompt_raw[cp_list[q][0]],
        lambda q: context_list[cp_list[q][1]],
        lambda q: cp_text[q],
    )
    M = backbone.max_length
    if backbone.kind == "decoder":
        _decoder_jobs(b, M, p_ids, seq_list, seq_parts, seq_ids, SEQ, PROMPT)
        _decoder_jobs(b, M, cp_ids, cs_list, cs_parts, cs_ids, CTX_SEQ, CTX_PROMPT)
        type_ids = None
    else:
        _encoder_jobs(b, M, p_ids, seq_list, seq_ids, SEQ, PROMPT)
        _encoder_jobs(b, M, cp_ids, cs_list, cs_ids, CTX_SEQ, CTX_PROMPT)
        type_ids = b.type_ids if backbone.skeleton()["has_tt"] else None
    out = np.asarray(b.outputs, dtype=np.int64).reshape(-1, 4)
    return Plan(
        ids=b.ids,
        type_ids=type_ids,
        lengths=np.fromiter((len(x) for x in b.ids), dtype=np.int64, count=len(b.ids)),
        out_job=out[:, 0], out_group=out[:, 1], out_row=out[:, 2], out_pos=out[:, 3],
        prompt_text=prompt_text,
        seq_prompt=np.asarray([p for p, _ in seq_list], dtype=np.int64),
        seq_text=[r for _, r in seq_list],
        contexts=context_list,
        cp_prompt=np.asarray([p for p, _ in cp_list], dtype=np.int64),
        cp_context=np.asarray([c for _, c in cp_list], dtype=np.int64),
        cs_cp=np.asarray([q for q, _ in cs_list], dtype=np.int64),
        cs_text=[r for _, r in cs_list],
        pairs=pair,
        attributes=attributes,
        splits=splits,
        context_in_sequence=context_in_sequence,
        stats=b.stats,
    )


def _decoder_jobs(b: _Builder, M: int, base_ids, rows, part_texts, resp_ids, seq_group, base_group) -> None:
    """(prompt, response) passes; each also gives its prompt's router input when the prompt is uncut."""
    provided = np.zeros(len(base_ids), dtype=bool)
    for s, ((p, resp), part, r) in enumerate(zip(rows, part_texts, resp_ids)):
        pi = base_ids[p]
        lead = b.lead(pi)
        pk, rk = b.fit(pi, r, M, lead, b.tail(part, resp) if len(pi) + len(r) > M else 0)
        outs = [(seq_group, s, len(pk) + len(rk) - 1)]
        if not provided[p] and len(pk) == len(pi):
            provided[p] = True
            outs.append((base_group, p, len(pk) - 1))
        b.add(pk + rk, None, outs)
    for p in np.flatnonzero(~provided):  # prompts whose every pass cut them (or unused): a pass alone
        pi = base_ids[p]
        if len(pi) > M:
            b.stats["truncated_router_inputs"] += 1
        pk = b.keep_end(pi, M, b.lead(pi))
        b.add(pk, None, [(base_group, int(p), len(pk) - 1)])


def _encoder_jobs(b: _Builder, M: int, base_ids, rows, resp_ids, seq_group, base_group) -> None:
    """Encoders see the whole sequence: a pair pass per (prompt, response), a single pass per prompt."""
    sk = b.bb.skeleton()
    fixed = len(sk["pair_pre"]) + len(sk["pair_mid"]) + len(sk["pair_post"])
    for s, ((p, _), r) in enumerate(zip(rows, resp_ids)):
        pk, rk = b.fit(base_ids[p], r, M - fixed, 0, 0)
        ids = sk["pair_pre"] + pk + sk["pair_mid"] + rk + sk["pair_post"]
        types = sk["pair_pre_tt"] + sk["type_a"] * len(pk) + sk["pair_mid_tt"] + sk["type_b"] * len(rk) + sk["pair_post_tt"]
        b.add(ids, types, [(seq_group, s, -1)])
    budget = M - len(sk["pre"]) - len(sk["post"])
    for p, pi in enumerate(base_ids):
        if len(pi) > budget:
            b.stats["truncated_router_inputs"] += 1
        ids = sk["pre"] + b.keep_end(pi, budget) + sk["post"]
        b.add(ids, [0] * len(ids), [(base_group, p, -1)])


def make_batches(lengths: np.ndarray, batch_tokens: int, jobs: np.ndarray | None = None) -> list[np.ndarray]:
    """Greedy token-budget batches over jobs sorted longest first: padded size (rows x longest) <= budget.

    Sorting makes neighbours nearly equal in length, so padding stays small; longest first makes an
    out-of-memory batch show up at once, not at the end of a long run.
    """
    jobs = np.arange(len(lengths)) if jobs is None else np.asarray(jobs)
    if len(jobs) == 0:
        return []
    order = jobs[np.lexsort((jobs, -lengths[jobs]))]
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])
        rows = max(1, batch_tokens // max(width, 1))
        batches.append(order[start : start + rows])
        start += rows
    return batches
