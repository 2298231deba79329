"""Split one preference row into (prompt, chosen reply, rejected reply), whatever its shape: TRL's four
preference formats, UltraFeedback's prompt next to conversations that repeat it, HH-RLHF's transcripts.
Conversations are lists of {"role", "content"} messages; the prompt keeps every turn before the last, and
the last turn, an assistant's, is the response. A row that does not fit raises ValueError saying why.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}
Messages = list[dict[str, Any]]


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def is_transcript(value: Any) -> bool:
    return isinstance(value, str) and "Assistant:" in value and "Human:" in value


def as_messages(value: Any) -> Messages | None:
    """A list of {role, content} messages (lists, tuples or numpy arrays from parquet), else None."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) == 0:
        return None
    messages = []
    for item in value:
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            return None
        messages.append({"role": str(item["role"]), "content": item["content"]})
    return messages


def parse_transcript(text: str) -> Messages:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}]. Text before the first turn
    marker, if any, is kept as a user message."""
    pieces = _TURN.split(text)
    messages = []
    if pieces[0].strip():
        messages.append({"role": "user", "content": pieces[0].strip()})
    for role, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": _ROLES[role], "content": content.strip()})
    return messages


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's standard implicit prompt, as `trl.data_utils.extract_prompt` takes it: the longest common prefix,
    less a space right before the first difference ("The sky is blue." / "The sky is green." -> "The sky is",
    " blue.", " green."). Unlike TRL, a text that is the start of the other is refused (no response)."""
    n = len(os.path.commonprefix([chosen, rejected]))
    if n == min(len(chosen), len(rejected)):
        raise ValueError("one of chosen and rejected is the start of the other, so no prompt can be split off")
    if n > 0 and chosen[n - 1] == " ":
        n -= 1
    if not chosen[:n].strip():
        raise ValueError("chosen and rejected share no leading text, so there is no prompt; add a prompt column")
    return chosen[:n], chosen[n:], rejected[n:]


def split_last_turn(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Conversations: every turn before the last is the prompt (the same on both sides); the last turn,
    an assistant's, is the response."""
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"the {side} conversation ends with a '{messages[-1]['role']}' turn; its last turn "
                             "must be the assistant's response")
    if chosen[:-1] != rejected[:-1]:
        n = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r), min(len(chosen), len(rejected)) - 1)
        raise ValueError(f"the chosen and rejected conversations differ at turn {n + 1}, before their last turn; "
                         "both must repeat the same prompt turns and differ only in the final assistant response")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def split_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of one row in any supported shape; prompt is None when the row has no
    prompt column. Values that are neither text nor conversations pass through for validation to name."""
    if is_missing(prompt) and is_transcript(chosen) and is_transcript(rejected):  # HH-RLHF: conversations as text
        chosen, rejected = parse_transcript(chosen), parse_transcript(rejected)
    c_msgs, r_msgs = as_messages(chosen), as_messages(rejected)
    if (c_msgs is None) != (r_msgs is None):
        conv, other = ("chosen", "rejected") if c_msgs is not None else ("rejected", "chosen")
        raise ValueError(f"{conv} is a conversation but {other} is not; both must have the same shape")
    if c_msgs is None:
        if not is_missing(prompt):
            return prompt, chosen, rejected  # TRL standard explicit
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            return prompt, chosen, rejected
        return split_common_prefix(chosen, rejected)  # TRL standard implicit
    p_msgs = as_messages(prompt)
    if p_msgs is not None:  # TRL conversational explicit; some datasets repeat the prompt in each reply
        c_msgs = c_msgs if c_msgs[: len(p_msgs)] == p_msgs else p_msgs + c_msgs
        r_msgs = r_msgs if r_msgs[: len(p_msgs)] == p_msgs else p_msgs + r_msgs
        return split_last_turn(c_msgs, r_msgs)
    history, chosen_text, rejected_text = split_last_turn(c_msgs, r_msgs)
    if is_missing(prompt):  # TRL conversational implicit
        if not history:
            raise ValueError("the conversations hold only the responses, no prompt turns; add a prompt column")
        return history, chosen_text, rejected_text
    # UltraFeedback: a prompt string next to conversations that repeat it as their last user turn
    users = [m for m in history if m["role"] == "user"]
    if history and (not users or str(users[-1]["content"]).strip() != str(prompt).strip()):
        got = repr(str(users[-1]["content"])[:60]) if users else "no user turn"
        raise ValueError(f"the prompt column ({str(prompt)[:60]!r}) does not match the conversations' last user turn "
                         f"({got}); fix the row, or drop the prompt column to take the prompt from the conversations")
    return (prompt if len(history) <= 1 else history), chosen_text, rejected_text
