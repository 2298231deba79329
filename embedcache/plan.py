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
        self.backbone = backbone
        self.max_length = max_length
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

    def fit(self, prompt: list[int], response: list[int], budget: int, lead: int, n_tail: int) -> tuple[list[int], list[int]]:
        if len(prompt) + len(response) <= budget:
            return prompt, response
        reserve = min(len(prompt), max(lead + MIN_PROMPT_TOKENS, budget // 8))
        if len(response) <= budget - reserve:
            self.stats["truncated_prompts"] += 1
            return self.keep_end(prompt, budget - len(response), lead), response
        if len(prompt) > reserve:
            self.stats["truncated_prompts"] += 1
        self.stats["truncated_responses"] += 1
        kept_prompt = self.keep_end(prompt, reserve, lead)
        room = budget - len(kept_prompt)
        n_tail = min(n_tail, room)
        return kept_prompt, response[: room - n_tail] + (response[len(response) - n_tail :] if n_tail else [])


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
    max_length = backbone.max_length
    if backbone.kind == "decoder":
        _decoder_jobs(builder, max_length, prompt_ids, seqs, seq_parts, seq_ids, SEQ, PROMPT)
        _decoder_jobs(builder, max_length, context_prompt_ids, context_seqs, context_seq_parts, context_seq_ids, CTX_SEQ, CTX_PROMPT)
        with_types = False
    else:
        _encoder_jobs(builder, max_length, prompt_ids, seqs, seq_ids, SEQ, PROMPT)
        _encoder_jobs(builder, max_length, context_prompt_ids, context_seqs, context_seq_ids, CTX_SEQ, CTX_PROMPT)
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


def _decoder_jobs(builder: _Builder, max_length: int, prompt_ids, rows, part_texts, response_ids, seq_group, base_group) -> None:
    """(prompt, response) passes; each also gives its prompt's router input when the prompt is uncut.

    rows: (prompt row, response text) of each sequence of `seq_group`; prompt_ids: the tokens of each
    prompt row (group `base_group`: the prompts, or the context prompts); part_texts / response_ids: each
    sequence's rendered response part and its tokens."""
    provided = np.zeros(len(prompt_ids), dtype=bool)
    for s, ((p, response_text), part, response) in enumerate(zip(rows, part_texts, response_ids)):
        prompt = prompt_ids[p]
        lead = builder.lead(prompt)
        n_tail = builder.tail(part, response_text) if len(prompt) + len(response) > max_length else 0
        kept_prompt, kept_response = builder.fit(prompt, response, max_length, lead, n_tail)
        outs = [(seq_group, s, len(kept_prompt) + len(kept_response) - 1)]
        if not provided[p] and len(kept_prompt) == len(prompt):
            provided[p] = True
            outs.append((base_group, p, len(kept_prompt) - 1))
        builder.add(kept_prompt + kept_response, None, outs)
    for p in np.flatnonzero(~provided):  # prompts that every pass cut (or no pass used): a pass of their own
        prompt = prompt_ids[p]
        if len(prompt) > max_length:
            builder.stats["truncated_router_inputs"] += 1
        kept_prompt = builder.keep_end(prompt, max_length, builder.lead(prompt))
        builder.add(kept_prompt, None, [(base_group, int(p), len(kept_prompt) - 1)])


def _encoder_jobs(builder: _Builder, max_length: int, prompt_ids, rows, response_ids, seq_group, base_group) -> None:
    """Encoders see the whole sequence: a pair pass per (prompt, response), a single pass per prompt."""
    skeleton = builder.backbone.skeleton()
    fixed = len(skeleton["pair_pre"]) + len(skeleton["pair_mid"]) + len(skeleton["pair_post"])
    for s, ((p, _), response) in enumerate(zip(rows, response_ids)):
        kept_prompt, kept_response = builder.fit(prompt_ids[p], response, max_length - fixed, 0, 0)
        ids = skeleton["pair_pre"] + kept_prompt + skeleton["pair_mid"] + kept_response + skeleton["pair_post"]
        types = (skeleton["pair_pre_tt"] + skeleton["type_a"] * len(kept_prompt) + skeleton["pair_mid_tt"]
                 + skeleton["type_b"] * len(kept_response) + skeleton["pair_post_tt"])
        builder.add(ids, types, [(seq_group, s, -1)])
    budget = max_length - len(skeleton["pre"]) - len(skeleton["post"])
    for p, prompt in enumerate(prompt_ids):
        if len(prompt) > budget:
            builder.stats["truncated_router_inputs"] += 1
        ids = skeleton["pre"] + builder.keep_end(prompt, budget) + skeleton["post"]
        builder.add(ids, [0] * len(ids), [(base_group, p, -1)])
