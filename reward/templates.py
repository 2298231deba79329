"""Recover the plain conversation from a prompt a policy's chat template already rendered.

RLHF clients send the policy's rendered prompt: OpenRLHF posts `prompts` = apply_chat_template(messages,
add_generation_prompt=True) and `query` = decode(prompt ids + response ids, skip_special_tokens=False), so
the response ends with the policy's end-of-turn token. Scoring that string as a plain prompt would render
it a second time with the backbone's template. `plain_row(prompt, response)` recognises a prompt rendered
by one of the common chat formats (the whole string must parse: optional BOS, complete turns, then the
format's generation header), returns the messages (a single user turn as a plain string) without the
system turn the template adds on its own (Llama 3's dates, Qwen's default), and strips end-of-turn tokens
from the end of the response. Anything else is returned unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChatFormat:
    """One family of chat templates: a turn's pattern (groups role, content) and the generation header."""

    name: str
    turn: re.Pattern
    generation: str
    ends: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()  # the format's role name -> micro's
    default_system: re.Pattern | None = None  # a system text the template adds by itself (dropped)


FORMATS = (
    ChatFormat("llama3", re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
               "<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
               ("<|begin_of_text|>",), (("ipython", "user"),),
               re.compile(r"^(?:Environment: ipython\n)?(?:Cutting Knowledge Date: [^\n]*\n)?Today Date: [^\n]*(?:\n\n|$)")),
    ChatFormat("chatml", re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n?", re.S), "<|im_start|>assistant\n",
               ("<|im_end|>", "<|endoftext|>"), (),
               default_system=re.compile(r"^You are (?:Qwen, created by Alibaba Cloud\. )?You are a helpful assistant\.$|^You are a helpful assistant\.$")),
    ChatFormat("gemma", re.compile(r"<start_of_turn>(\w+)\n(.*?)<end_of_turn>\n?", re.S), "<start_of_turn>model\n",
               ("<end_of_turn>", "<eos>"), ("<bos>",), (("model", "assistant"),)),
    ChatFormat("phi3", re.compile(r"<\|(system|user|assistant)\|>\n?(.*?)(?:<\|end\|>|</s>)\n?", re.S), "<|assistant|>\n",
               ("<|end|>", "<|endoftext|>", "</s>"), ("<s>",)),
)
ROLES = ("system", "user", "assistant")


def parse_rendered(prompt: str) -> tuple[ChatFormat, list[dict[str, str]]] | None:
    """(format, messages) when `prompt` is a whole rendered conversation ending in a generation header."""
    for fmt in FORMATS:
        messages = _parse(fmt, prompt)
        if messages:
            return fmt, messages
    return None


def _parse(fmt: ChatFormat, text: str) -> list[dict[str, str]] | None:
    if not text.endswith(fmt.generation):
        return None
    body = text[: len(text) - len(fmt.generation)]
    for prefix in fmt.prefixes:
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    messages, pos, roles = [], 0, dict(fmt.roles)
    for match in fmt.turn.finditer(body):
        if match.start() != pos:
            return None
        role = roles.get(match.group(1), match.group(1))
        if role not in ROLES:
            return None
        messages.append({"role": role, "content": match.group(2)})
        pos = match.end()
    if pos != len(body) or not messages or messages[-1]["role"] == "assistant":
        return None
    return _drop_default_system(fmt, messages)


def _drop_default_system(fmt: ChatFormat, messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    if fmt.default_system is None or messages[0]["role"] != "system":
        return messages
    content = fmt.default_system.sub("", messages[0]["content"], count=1)
    if content.strip():
        return [{"role": "system", "content": content}] + messages[1:]
    return messages[1:] or None


def strip_ends(response: str, fmt: ChatFormat | None = None) -> str:
    """`response` without the end-of-turn / end-of-text tokens a decoder leaves at its end."""
    ends = fmt.ends if fmt is not None else tuple(e for f in FORMATS for e in f.ends)
    changed = True
    while changed:
        changed = False
        for end in ends:
            if response.endswith(end):
                response, changed = response[: len(response) - len(end)], True
    return response


def plain_row(prompt: Any, response: str) -> tuple[Any, str]:
    """(prompt, response) as micro scores them: a rendered prompt becomes its messages (one user turn: its
    text), and the response loses the format's trailing end tokens. Plain rows come back unchanged."""
    if not isinstance(prompt, str):
        return prompt, response
    parsed = parse_rendered(prompt)
    if parsed is None:
        return prompt, response
    fmt, messages = parsed
    plain = messages[0]["content"] if len(messages) == 1 and messages[0]["role"] == "user" else messages
    return plain, strip_ends(response, fmt)


def split_query(query: str) -> tuple[str, str] | None:
    """(rendered prompt, response) of a query sent without its prompt: the split is after the last
    generation header of a recognised format; None when no format matches."""
    for fmt in FORMATS:
        cut = query.rfind(fmt.generation)
        if cut >= 0 and _parse(fmt, query[: cut + len(fmt.generation)]):
            return query[: cut + len(fmt.generation)], query[cut + len(fmt.generation):]
    return None


def plain_rows(prompts: list, responses: list[str]) -> tuple[list, list[str]]:
    """plain_row of every row."""
    rows = [plain_row(p, r) for p, r in zip(prompts, responses)]
    return [p for p, _ in rows], [r for _, r in rows]


__all__ = ["FORMATS", "ChatFormat", "parse_rendered", "plain_row", "plain_rows", "split_query", "strip_ends"]
