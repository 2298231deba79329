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
class Jobs:
    """What the forward passes need, as flat arrays (cheap to save, share between ranks and memory-map).

    Job j's tokens are `tokens[offsets[j]:offsets[j+1]]`; output k is read from job `out_job[k]` at token
    position `out_pos[k]` (-1: pooled) and fills row `out_row[k]` of group `out_group[k]`.
    """

    tokens: np.ndarray  # [total tokens] int32
    offsets: np.ndarray  # [jobs + 1] int64
    type_ids: np.ndarray | None  # [total tokens] int8 (encoders with token types)
    out_job: np.ndarray
    out_group: np.ndarray
    out_row: np.ndarray
    out_pos: np.ndarray

    FILES = ("tokens", "offsets", "type_ids", "out_job", "out_group", "out_row", "out_pos")

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_jobs(self) -> int:
        return len(self.offsets) - 1

    def ids(self, job: int) -> np.ndarray:
        return self.tokens[self.offsets[job] : self.offsets[job + 1]]

    def types(self, job: int) -> np.ndarray | None:
        return None if self.type_ids is None else self.type_ids[self.offsets[job] : self.offsets[job + 1]]

    def save(self, folder) -> None:
        """One .npy file per array (written under a temporary name, then renamed)."""
        import os
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            arr = getattr(self, name)
            if arr is not None:
                tmp = folder / f".tmp{os.getpid()}-{name}.npy"
                np.save(tmp, arr)
                os.replace(tmp, folder / f"{name}.npy")

    @classmethod
    def load(cls, folder) -> "Jobs":
        """Memory-mapped: each rank reads only the tokens of its own batches."""
        from pathlib import Path

        folder = Path(folder)
        arrays = {}
        for name in cls.FILES:
            f = folder / f"{name}.npy"
            arrays[name] = np.load(f, mmap_mode="r", allow_pickle=False) if f.exists() else None
        return cls(**arrays)


def _from_jobs(name: str) -> property:
    """A read-only Plan attribute that is its Jobs' attribute `name` (lengths, out_job, n_jobs ...)."""
    return property(lambda plan: getattr(plan.jobs, name), doc=f"`jobs.{name}`")


@dataclass
class Plan:
    """Jobs (token sequences) and outputs (embeddings), plus the cache tables they fill.

    Row tables, named after the cache's groups: a sequence is (prompt row, response text); a context
    prompt is (prompt row, context row); a context sequence is (context prompt row, response text).
    """

    jobs: Jobs
    prompt_text: list[str]
    seq_prompt: np.ndarray  # [sequences] row in prompts
    seq_text: list[str]  # [sequences] response text
    contexts: list[str]
    context_prompt_prompt: np.ndarray  # [context prompts] row in prompts
    context_prompt_context: np.ndarray  # [context prompts] row in contexts
    context_seq_context_prompt: np.ndarray  # [context sequences] row in context prompts
    context_seq_text: list[str]  # [context sequences] response text
    pairs: dict[str, np.ndarray]
    attributes: list[str]
    splits: list[str]
    context_in_sequence: bool
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ids(self) -> list[np.ndarray]:
        """Token ids of each job (views into `jobs.tokens`)."""
        return [self.jobs.ids(j) for j in range(self.n_jobs)]

    @property
    def type_ids(self) -> list[np.ndarray] | None:
        return None if self.jobs.type_ids is None else [self.jobs.types(j) for j in range(self.n_jobs)]

    lengths = _from_jobs("lengths")
    out_job = _from_jobs("out_job")
    out_group = _from_jobs("out_group")
    out_row = _from_jobs("out_row")
    out_pos = _from_jobs("out_pos")
    n_jobs = _from_jobs("n_jobs")

    def n_rows(self, group: int) -> int:
        return [len(self.seq_text), len(self.prompt_text), len(self.context_prompt_prompt), len(self.context_seq_text)][group]

    def keys(self, group: int) -> list:
        """Text keys of a group's rows, for reusing embeddings of an earlier cache of the same backbone."""
        if group == SEQ:
            return [(self.prompt_text[p], t) for p, t in zip(self.seq_prompt, self.seq_text)]
        if group == PROMPT:
            return list(self.prompt_text)
        context_prompt_keys = [(self.contexts[c], self.prompt_text[p])
                               for p, c in zip(self.context_prompt_prompt, self.context_prompt_context)]
        if group == CTX_PROMPT:
            return context_prompt_keys
        return [context_prompt_keys[q] + (t,) for q, t in zip(self.context_seq_context_prompt, self.context_seq_text)]

    def fingerprint(self) -> str:
        """sha256 of everything the model will see and where each embedding goes."""
        h = hashlib.sha256()
        for arr in (self.lengths, self.out_job, self.out_group, self.out_row, self.out_pos):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.jobs.tokens, dtype=np.int64).tobytes())
        if self.jobs.type_ids is not None and len(self.jobs.type_ids):
            h.update(np.ascontiguousarray(self.jobs.type_ids, dtype=np.int64).tobytes())
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

    def jobs(self, with_types: bool) -> Jobs:
        lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        out = np.asarray(self.outputs, dtype=np.int64).reshape(-1, 4)
        return Jobs(
            tokens=np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int32),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            type_ids=(np.concatenate(self.type_ids) if self.type_ids else np.zeros(0, dtype=np.int8)) if with_types else None,
            out_job=out[:, 0], out_group=out[:, 1], out_row=out[:, 2], out_pos=out[:, 3],
        )

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
    attribute_col = table["attribute"].tolist() if "attribute" in table.columns else [""] * n
    context_col = [_context(x) for x in table["context"].tolist()] if "context" in table.columns else [None] * n
    split_col = table["split"].tolist() if "split" in table.columns else ["train"] * n
    attributes = list(dict.fromkeys("" if a is None else str(a) for a in attribute_col))
    splits = list(dict.fromkeys(str(s) for s in split_col))
    attribute_id = {a: i for i, a in enumerate(attributes)}
    split_id = {s: i for i, s in enumerate(splits)}

    # distinct rows of each group, in first-appearance order; each dict maps a row's key to its row number
    prompt_row_of_key: dict[str, int] = {}
    prompt_row_of_text: dict[str, int] = {}
    prompt_text: list[str] = []
    prompt_raw: list[Any] = []
    context_row: dict[str, int] = {}
    context_prompt_row: dict[tuple[int, int], int] = {}  # (prompt row, context row)
    seq_row: dict[tuple[int, str], int] = {}  # (prompt row, response)
    context_seq_row: dict[tuple[int, str], int] = {}  # (context prompt row, response)
    pair = {k: np.full(n, -1, dtype=np.int64) for k in ("chosen", "rejected", "prompt", "context_prompt", "chosen_context", "rejected_context", "attribute", "context", "split")}
    for i in range(n):
        key = _prompt_key(raw_prompts[i])
        p = prompt_row_of_key.get(key)
        if p is None:
            text = backbone.render_prompt(raw_prompts[i])
            p = prompt_row_of_text.setdefault(text, len(prompt_text))
            if p == len(prompt_text):
                prompt_text.append(text)
                prompt_raw.append(raw_prompts[i])
            prompt_row_of_key[key] = p
        pair["prompt"][i] = p
        pair["chosen"][i] = seq_row.setdefault((p, chosen[i]), len(seq_row))
        pair["rejected"][i] = seq_row.setdefault((p, rejected[i]), len(seq_row))
        pair["attribute"][i] = attribute_id["" if attribute_col[i] is None else str(attribute_col[i])]
        pair["split"][i] = split_id[str(split_col[i])]
        context = context_col[i]
        if context is not None:
            c = context_row.setdefault(context, len(context_row))
            q = context_prompt_row.setdefault((p, c), len(context_prompt_row))
            pair["context"][i], pair["context_prompt"][i] = c, q
            if context_in_sequence:
                pair["chosen_context"][i] = context_seq_row.setdefault((q, chosen[i]), len(context_seq_row))
                pair["rejected_context"][i] = context_seq_row.setdefault((q, rejected[i]), len(context_seq_row))

    contexts = list(context_row)
    context_prompts = list(context_prompt_row)
    seqs = list(seq_row)
    context_seqs = list(context_seq_row)
    builder = _Builder(backbone, backbone.max_length)
    prompt_ids = builder.tokenize(prompt_text)
    context_prompt_text = [backbone.render_prompt(prompt_raw[p], contexts[c]) for p, c in context_prompts]
    context_prompt_ids = builder.tokenize(context_prompt_text)

    def response_parts(rows, base_raw, base_context, base_text):
        texts = [backbone.render_response(base_raw(k), base_context(k), base_text(k), resp) for k, resp in rows]
        return texts, builder.tokenize(texts)

    seq_parts, seq_ids = response_parts(seqs, lambda p: prompt_raw[p], lambda p: None, lambda p: prompt_text[p])
    context_seq_parts, context_seq_ids = response_parts(
        context_seqs,
        lambda q: prompt_raw[context_prompts[q][0]],
        lambda q: contexts[context_prompts[q][1]],
        lambda q: context_prompt_text[q],
    )
    M = backbone.max_length
    if backbone.kind == "decoder":
        _decoder_jobs(builder, M, prompt_ids, seqs, seq_parts, seq_ids, SEQ, PROMPT)
        _decoder_jobs(builder, M, context_prompt_ids, context_seqs, context_seq_parts, context_seq_ids, CTX_SEQ, CTX_PROMPT)
        with_types = False
    else:
        _encoder_jobs(builder, M, prompt_ids, seqs, seq_ids, SEQ, PROMPT)
        _encoder_jobs(builder, M, context_prompt_ids, context_seqs, context_seq_ids, CTX_SEQ, CTX_PROMPT)
        with_types = backbone.skeleton()["has_tt"]
    return Plan(
        jobs=builder.jobs(with_types),
        prompt_text=prompt_text,
        seq_prompt=np.asarray([p for p, _ in seqs], dtype=np.int64),
        seq_text=[r for _, r in seqs],
        contexts=contexts,
        context_prompt_prompt=np.asarray([p for p, _ in context_prompts], dtype=np.int64),
        context_prompt_context=np.asarray([c for _, c in context_prompts], dtype=np.int64),
        context_seq_context_prompt=np.asarray([q for q, _ in context_seqs], dtype=np.int64),
        context_seq_text=[r for _, r in context_seqs],
        pairs=pair,
        attributes=attributes,
        splits=splits,
        context_in_sequence=context_in_sequence,
        stats=builder.stats,
    )


def _decoder_jobs(builder: _Builder, M: int, base_ids, rows, part_texts, resp_ids, seq_group, base_group) -> None:
    """(prompt, response) passes; each also gives its prompt's router input when the prompt is uncut."""
    provided = np.zeros(len(base_ids), dtype=bool)
    for s, ((p, resp), part, r) in enumerate(zip(rows, part_texts, resp_ids)):
        pi = base_ids[p]
        lead = builder.lead(pi)
        pk, rk = builder.fit(pi, r, M, lead, builder.tail(part, resp) if len(pi) + len(r) > M else 0)
        outs = [(seq_group, s, len(pk) + len(rk) - 1)]
        if not provided[p] and len(pk) == len(pi):
            provided[p] = True
            outs.append((base_group, p, len(pk) - 1))
        builder.add(pk + rk, None, outs)
    for p in np.flatnonzero(~provided):  # prompts that every pass cut (or no pass used): a pass of their own
        pi = base_ids[p]
        if len(pi) > M:
            builder.stats["truncated_router_inputs"] += 1
        pk = builder.keep_end(pi, M, builder.lead(pi))
        builder.add(pk, None, [(base_group, int(p), len(pk) - 1)])


def _encoder_jobs(builder: _Builder, M: int, base_ids, rows, resp_ids, seq_group, base_group) -> None:
    """Encoders see the whole sequence: a pair pass per (prompt, response), a single pass per prompt."""
    sk = builder.bb.skeleton()
    fixed = len(sk["pair_pre"]) + len(sk["pair_mid"]) + len(sk["pair_post"])
    for s, ((p, _), r) in enumerate(zip(rows, resp_ids)):
        pk, rk = builder.fit(base_ids[p], r, M - fixed, 0, 0)
        ids = sk["pair_pre"] + pk + sk["pair_mid"] + rk + sk["pair_post"]
        types = sk["pair_pre_tt"] + sk["type_a"] * len(pk) + sk["pair_mid_tt"] + sk["type_b"] * len(rk) + sk["pair_post_tt"]
        builder.add(ids, types, [(seq_group, s, -1)])
    budget = M - len(sk["pre"]) - len(sk["post"])
    for p, pi in enumerate(base_ids):
        if len(pi) > budget:
            builder.stats["truncated_router_inputs"] += 1
        ids = sk["pre"] + builder.keep_end(pi, budget) + sk["post"]
        builder.add(ids, [0] * len(ids), [(base_group, p, -1)])


def bucket_width(width: int) -> int:
    """`width` rounded up to one of 8 steps per power of two (at least 16): at most 1/8 extra padding, and
    few enough distinct widths (~8 per doubling) that a compiled model is reused rather than recompiled."""
    width = max(int(width), 1)
    step = max((1 << max(width - 1, 1).bit_length()) // 16, 16)
    return -(-width // step) * step


def make_batches(lengths: np.ndarray, batch_tokens: int, jobs: np.ndarray | None = None, *, bucketed: bool = False) -> list[np.ndarray]:
    """Greedy token-budget batches over jobs sorted longest first: padded size (rows x longest) <= budget.

    Sorting makes neighbours nearly equal in length, so padding stays small; longest first makes an
    out-of-memory batch show up at once, not at the end of a long run. `bucketed`: rows are counted
    against the bucketed width (`bucket_width`), so every batch of a bucket can be padded to one shape.
    """
    jobs = np.arange(len(lengths)) if jobs is None else np.asarray(jobs)
    if len(jobs) == 0:
        return []
    order = jobs[np.lexsort((jobs, -lengths[jobs]))]
    widths = lengths[order]
    if bucketed:  # non-increasing like the lengths; a batch never spans two buckets
        unique, inverse = np.unique(widths, return_inverse=True)
        widths = np.array([bucket_width(w) for w in unique], dtype=np.int64)[inverse]
    descending = -widths  # ascending, for searchsorted
    batches, start = [], 0
    while start < len(order):
        width = int(widths[start])
        rows = max(1, batch_tokens // max(width, 1))
        if bucketed:
            rows = min(rows, int(np.searchsorted(descending, -width, side="right")) - start)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def batch_shape(lengths: np.ndarray, batch: np.ndarray, batch_tokens: int) -> tuple[int, int]:
    """(rows, width) a bucketed batch is padded to: the same for every batch of its bucket."""
    width = bucket_width(int(lengths[batch].max()))
    return max(1, batch_tokens // width), width
