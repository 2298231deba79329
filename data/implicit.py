"""Split implicit preference pairs (full transcripts or conversations in chosen/rejected) into
(prompt, chosen reply, rejected reply).

HH-RLHF writes each side as one string, "\\n\\nHuman: ...\\n\\nAssistant: ...", repeating the shared
history; preference-700K writes each side as a list of {role, content} messages. Either way the
prompt is the history both sides share and the responses are the final assistant replies. The prompt
comes back as a conversation (list of {"role": "user"|"assistant", "content": str}).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_transcript(value: Any) -> bool:
    return isinstance(value, str) and "Assistant:" in value and "Human:" in value


def as_messages(value: Any) -> list[dict[str, str]] | None:
    """A list of {role, content} messages (lists, tuples or numpy arrays from parquet), else None."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) == 0:
        return None
    messages = []
    for item in value:
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            return None
        messages.append({"role": str(item["role"]), "content": item["content"]})
    return messages


def parse_transcript(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}]. Text before the first turn
    marker, if any, is kept as a user message."""
    pieces = _TURN.split(text)
    messages = []
    if pieces[0].strip():
        messages.append({"role": "user", "content": pieces[0].strip()})
    for role, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": _ROLES[role], "content": content.strip()})
    return messages


def split_transcripts(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Shared prompt = the longest common prefix, cut at the last '\\n\\nAssistant:' both share."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(ASSISTANT, 0, shared)
    if cut < 0:
        raise ValueError("chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be split off "
                         "(implicit transcripts must both start with the same '\\n\\nHuman: ...\\n\\nAssistant:' history)")
    prompt = parse_transcript(chosen[:cut])
    if not prompt:
        raise ValueError("the shared history before the last '\\n\\nAssistant:' is empty")
    start = cut + len(ASSISTANT)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict[str, str]], str, str]:
    """Shared prompt = the messages both sides begin with; each side must then end in one assistant reply."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise ValueError("chosen and rejected conversations share no leading prompt messages")
    tails = {"chosen": chosen[n:], "rejected": rejected[n:]}
    for side, tail in tails.items():
        if len(tail) != 1 or tail[0]["role"] != "assistant":
            got = ", ".join(m["role"] for m in tail) or "nothing"
            raise ValueError(f"after the shared prompt, {side} holds [{got}]; expected exactly one assistant reply")
    return chosen[:n], tails["chosen"][0]["content"], tails["rejected"][0]["content"]


def response_text(value: Any, prompt: Any) -> Any:
    """TRL's conversational explicit format stores a reply as [{"role": "assistant", ...}], sometimes
    with the prompt messages repeated in front: return the reply's text. Anything else is returned
    unchanged (validation reports it if it is not text)."""
    messages = as_messages(value)
    if messages is None:
        return value
    prompt_messages = as_messages(prompt) or []
    if messages[: len(prompt_messages)] == prompt_messages and len(messages) > len(prompt_messages):
        messages = messages[len(prompt_messages):]
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        return messages[0]["content"]
    return value
