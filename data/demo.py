"""A small built-in preference dataset for trying MiCRo in seconds, written entirely by this project.

The text lives in ``demo_prompts.jsonl`` beside this module: one record per prompt with hand-written
pieces (``answer``: the short core answer, ``expert``: a technical version with caveats, ``steps``: three
simple steps, ``fun``: a joke about the topic), plus its ``topic`` and ``home`` group. Each prompt gets
one response per style in :data:`DEMO_STYLES`, built from those pieces by small fixed templates (the
template variant depends only on the prompt id, never on the seed, so the distinct texts are the same
for every seed and an embedding cache can be shared).

Four user groups (:data:`DEMO_GROUPS`) each prefer one style and reject every other one, so their
preferences conflict. A fifth style, ``rambling``, is preferred by no group (a shared "bad" answer).

Identifiability (see docs/design.md): the stage-1 router sees only the prompt, so the group must depend on
the prompt. Every prompt has a home group (topics lean towards groups, and the wording hints at the
asker: "Quick:" for busy professionals, jargon for experts, "lol"/emojis for casual fans, "I'm new to"
for newcomers). Each prompt is labeled by 1-3 groups, drawn without replacement with weight
``home_weight`` for the home group and equal weights for the others; a group that labels a prompt
contributes one pair per rejected style. The prompt alone therefore predicts the group well above
chance but not perfectly, and the same prompt often appears with conflicting labels.

Splits are by prompt (no prompt in both), stratified by home group, about 75/25.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_FILE = Path(__file__).resolve().parent / "demo_prompts.jsonl"

DEMO_STYLES: tuple[str, ...] = ("concise", "expert", "playful", "beginner", "rambling")
"""Response styles. The first four are each preferred by one group; ``rambling`` by none."""

DEMO_GROUPS: dict[str, dict[str, str]] = {
    "busy-professional": {
        "context": "I am a busy professional; give me the shortest correct answer.",
        "style": "concise",
    },
    "domain-expert": {
        "context": "I am a domain expert; give me precise technical detail, with the caveats.",
        "style": "expert",
    },
    "casual-fan": {
        "context": "I am just here for fun; keep it light, playful and entertaining.",
        "style": "playful",
    },
    "newcomer": {
        "context": "I am completely new to this; please explain it simply, step by step.",
        "style": "beginner",
    },
}
"""User groups: name -> {"context": one-sentence self-description, "style": preferred style}."""

COLUMNS = ["prompt", "chosen", "rejected", "attribute", "context", "split"]
_REQUIRED = ("id", "topic", "home", "prompt", "answer", "expert", "steps", "fun")

# ---- style templates (variant picked by a hash of the prompt id, independent of the seed) ----
_EXPERT_OPEN = ("Technically speaking:", "In precise terms:", "From a technical standpoint:", "Strictly speaking:")
_EXPERT_CLOSE = (
    "Edge cases and exact thresholds vary, so check the primary literature before relying on specific figures.",
    "These figures are typical values; the precise numbers depend on the setting and the source.",
    "Caveat: this summarizes the mainstream view, and the specialist literature contains exceptions.",
    "",
)
_PLAYFUL_OPEN = ("Ooh, love this one! 😄", "Ha, great question! 🎉", "Buckle up, buddy! 🚀", "Oh, this is a fun one! 🤩",
                 "Yesss, let's go! 🙌")
_PLAYFUL_MID = ("Long story short:", "TL;DR, my friend:", "The gist?", "Real talk:")
_PLAYFUL_END = ("😎", "✨🥳", "😜👍", "🙌🔥", "😂💯")
_BEGINNER_OPEN = (
    "Don't worry, this is easier than it looks! Here is what to do, step by step:",
    "Great question — everyone starts somewhere, and you can do this. Let's go one step at a time:",
    "No problem at all, let's walk through it slowly together:",
)
_BEGINNER_CLOSE = (
    "Take your time — you've got this!",
    "Go at your own pace, and don't worry about small mistakes; that's how everyone learns.",
    "That's it! It gets easier every time you try.",
)
_RAMBLING_OPEN = (
    "Well, that is a really interesting question, and honestly there are a lot of different ways to look at it, "
    "so let me think out loud for a moment.",
    "Hmm, so, this is one of those things where people have a lot of opinions, and I have heard many of them "
    "over the years, some more convincing than others.",
)
_RAMBLING_CLOSE = (
    "That said, it really depends on a lot of things, and everyone's situation is a bit different, so it is hard "
    "to say anything for certain, and it might be worth thinking about it some more and asking around.",
    "But of course there are many factors involved, and what works for one person might not work for another, "
    "so in the end it is really up to you and your circumstances, whatever those might be.",
)


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[zlib.crc32(key.encode("utf-8")) % len(options)]


def render_response(piece: dict, style: str) -> str:
    """The response to ``piece['prompt']`` in ``style`` (deterministic, seed-independent)."""
    pid = piece["id"]
    if style == "concise":
        return piece["answer"]
    if style == "expert":
        close = _pick(_EXPERT_CLOSE, pid + "/expert/close")
        return " ".join(s for s in (_pick(_EXPERT_OPEN, pid + "/expert/open"), piece["expert"], close) if s)
    if style == "playful":
        return (f"{_pick(_PLAYFUL_OPEN, pid + '/playful/open')} {piece['fun']} "
                f"{_pick(_PLAYFUL_MID, pid + '/playful/mid')} {piece['answer']} {_pick(_PLAYFUL_END, pid + '/playful/end')}")
    if style == "beginner":
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(piece["steps"], 1))
        return (f"{_pick(_BEGINNER_OPEN, pid + '/beginner/open')}\n{steps}\n"
                f"{_pick(_BEGINNER_CLOSE, pid + '/beginner/close')}")
    if style == "rambling":
        return (f"{_pick(_RAMBLING_OPEN, pid + '/rambling/open')} Some people would say this: "
                f"{piece['answer']} {_pick(_RAMBLING_CLOSE, pid + '/rambling/close')}")
    raise ValueError(f"unknown demo style {style!r}; expected one of {DEMO_STYLES}")


def load_demo_pieces(path: str | Path | None = None) -> list[dict]:
    """The hand-written records (one per prompt) from ``path`` (a JSONL file or a folder holding
    ``demo_prompts.jsonl``); the packaged file when None."""
    p = DEMO_FILE if path is None else Path(path)
    if p.is_dir():
        p = p / "demo_prompts.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"demo prompt file not found: {p}")
    pieces = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            missing = [k for k in _REQUIRED if k not in rec]
            if missing:
                raise ValueError(f"{p}:{lineno}: demo record lacks {missing}")
            if rec["home"] not in DEMO_GROUPS:
                raise ValueError(f"{p}:{lineno}: unknown home group {rec['home']!r}")
            pieces.append(rec)
    ids = [r["id"] for r in pieces]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{p}: duplicate prompt ids")
    return pieces


def _labelers(home: str, rng: np.random.Generator, home_weight: float) -> list[str]:
    """1-3 distinct groups that label one prompt: drawn without replacement, the home group with
    weight ``home_weight`` and the others sharing the rest equally."""
    names = list(DEMO_GROUPS)
    k = int(rng.choice([1, 2, 3], p=[0.35, 0.55, 0.1]))
    other = (1.0 - home_weight) / (len(names) - 1)
    weights = np.array([home_weight if g == home else other for g in names])
    chosen: list[str] = []
    for _ in range(k):
        w = weights.copy()
        for g in chosen:
            w[names.index(g)] = 0.0
        chosen.append(names[int(rng.choice(len(names), p=w / w.sum()))])
    return chosen


def load_demo(path: str | None = None, *, n_prompts: int | None = None, seed: int = 0,
              test_fraction: float = 0.25, home_weight: float = 0.8) -> pd.DataFrame:
    """The demo preference table: columns ``prompt, chosen, rejected, attribute, context, split``.

    path: a JSONL of hand-written pieces (or a folder holding ``demo_prompts.jsonl``); None = packaged.
    n_prompts: keep only this many prompts (balanced over home groups), for fast tests.
    seed: drives which prompts are kept, who labels each prompt and the split; the texts never change.
    Deterministic for given arguments.
    """
    pieces = load_demo_pieces(path)
    rng = np.random.default_rng(seed)

    # Balanced order: interleave the home groups, each in a seeded shuffled order.
    by_home = {g: [p for p in pieces if p["home"] == g] for g in DEMO_GROUPS}
    for g in by_home:
        by_home[g] = [by_home[g][i] for i in rng.permutation(len(by_home[g]))]
    order = []
    for i in range(max(len(v) for v in by_home.values())):
        order += [v[i] for v in by_home.values() if i < len(v)]
    if n_prompts is not None:
        if n_prompts < 2:
            raise ValueError("n_prompts must be at least 2 (one train and one test prompt)")
        order = order[:n_prompts]

    # Split by prompt, stratified by home group; at least one test and one train prompt.
    n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
    test_ids: set[str] = set()
    homes = [g for g in DEMO_GROUPS if any(p["home"] == g for p in order)]
    per_home = {g: [p["id"] for p in order if p["home"] == g] for g in homes}
    quota = {g: test_fraction * len(v) for g, v in per_home.items()}
    alloc = {g: int(q) for g, q in quota.items()}
    for g in sorted(homes, key=lambda g: (alloc[g] - quota[g], homes.index(g))):  # largest remainders first
        if sum(alloc.values()) >= n_test:
            break
        alloc[g] += 1
    for g in homes:
        ids = per_home[g]
        test_ids.update(ids[i] for i in rng.permutation(len(ids))[: alloc[g]])

    rows = []
    for p in sorted(order, key=lambda r: r["id"]):
        responses = {s: render_response(p, s) for s in DEMO_STYLES}
        # Per-prompt generator: a prompt's labels do not depend on which other prompts were kept.
        prng = np.random.default_rng([seed, zlib.crc32(p["id"].encode("utf-8"))])
        split = "test" if p["id"] in test_ids else "train"
        for g in _labelers(p["home"], prng, home_weight):
            style, context = DEMO_GROUPS[g]["style"], DEMO_GROUPS[g]["context"]
            for other in DEMO_STYLES:
                if other != style:
                    rows.append((p["prompt"], responses[style], responses[other], g, context, split))
    return pd.DataFrame(rows, columns=COLUMNS)
