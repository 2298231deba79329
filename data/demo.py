"""A small built-in preference dataset for trying MiCRo in seconds, written entirely by this project,
made as hard as real preference data: paraphrased styles, overlapping groups, noisy labels.

The text lives in ``demo_prompts.jsonl`` beside this module: one record per prompt with hand-written
pieces (``answer``: the short core answer, ``expert``: a technical version with caveats, ``steps``: three
simple steps, ``fun``: a joke about the topic), plus its ``topic`` and ``home`` persona.

Styles. A response varies along three attributes (:data:`DEMO_ATTRIBUTES`): depth (the plain answer or
the first sentence of the technical version), tone (serious, or playful: the joke and an exclamation)
and format (prose, or the three steps). The eight combinations are the styles in :data:`DEMO_STYLES`, plus
``rambling`` (the plain answer padded with filler), which every group ranks last. Each attribute value has
several wordings (openers, closers, four step formats); the wording of a (prompt, style) is picked by a
hash of the prompt id, never by the seed, so a style is not one fixed phrase, and the distinct texts are
the same for every seed (one embedding cache serves every seed). As in real data, a prompt is answered in
a few styles only (:data:`STYLES_PER_PROMPT` combinations, hashed, and ``rambling``).

Groups overlap. A group's utility for a style is +1 per attribute on which the style has the value the
group prefers and -1 per other (:func:`utility`, -3..3). The eight user groups (:data:`DEMO_GROUPS`) hold
four preference profiles, two groups each (same taste, different personas and wordings): plain-serious-
prose (what most users want) and the three profiles one attribute away from it (technical, playful, steps). Any two profiles
agree on one attribute and differ on another, and the plain-serious-prose utility is the sum of the other
three; the population as a whole leans plain, serious and prose, as real users share a common taste. A
group that never gave a label can therefore be served from the other groups' heads when its context is
routed to the groups that like what it likes.

Contexts are paraphrased too: a group's context is one of its persona sentences plus one wording per
attribute it prefers, in a hashed order (picked per prompt and group, seed-independent), so routing must
generalise from the wording, not memorise one sentence per group.

Labels. Each prompt is labeled by 2-4 groups, drawn without replacement, the two groups of the prompt's
home persona (:data:`DEMO_HOMES`) sharing weight ``home_weight``; a labeling group compares
``pairs_per_label`` distinct style pairs of the prompt that its utility does not tie (a pair against
``rambling`` drawn with weight :data:`RAMBLING_PAIR_WEIGHT`), chosen = higher utility; then each pair's label
is flipped with probability ``label_noise`` (train and test alike, as in real data), from the same seeded
draws whatever the rate, so ``label_noise=0`` gives the same pairs with their clean labels.

Splits are by prompt (no prompt in both), stratified by home persona, about 75/25.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_FILE = Path(__file__).resolve().parent / "demo_prompts.jsonl"

DEMO_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "depth": ("plain", "technical"),
    "tone": ("serious", "playful"),
    "format": ("prose", "steps"),
}
"""Response attributes: name -> (value -1, value +1)."""

DEMO_STYLES: tuple[str, ...] = tuple(
    "-".join(v) for v in itertools.product(*DEMO_ATTRIBUTES.values())) + ("rambling",)
"""The eight attribute combinations ("plain-serious-prose" ... "technical-playful-steps") and ``rambling``."""

DEMO_HOMES: tuple[str, ...] = ("busy-professional", "domain-expert", "casual-fan", "newcomer")
"""Home personas of the prompts (the wording of a prompt hints at who asks it)."""

DEMO_GROUPS: dict[str, dict] = {
    "busy-professional": {"prefers": ("plain", "serious", "prose"), "home": "busy-professional",
                          "persona": ("I am a busy professional; give me the shortest correct answer.",
                                      "I have very little time between meetings.")},
    "executive": {"prefers": ("plain", "serious", "prose"), "home": "busy-professional",
                  "persona": ("I run a team and read everything on my phone.", "I'm a manager with a full calendar.")},
    "domain-expert": {"prefers": ("technical", "serious", "prose"), "home": "domain-expert",
                      "persona": ("I am a domain expert.", "I work in this field professionally.")},
    "researcher": {"prefers": ("technical", "serious", "prose"), "home": "domain-expert",
                   "persona": ("I'm a researcher.", "I read the papers in this area.")},
    "casual-fan": {"prefers": ("plain", "playful", "prose"), "home": "casual-fan",
                   "persona": ("I'm just here for fun.", "I'm a casual fan of the topic.")},
    "trivia-lover": {"prefers": ("plain", "playful", "prose"), "home": "casual-fan",
                     "persona": ("I love fun trivia.", "I'm here to be entertained.")},
    "newcomer": {"prefers": ("plain", "serious", "steps"), "home": "newcomer",
                 "persona": ("I am completely new to this.", "I'm a total beginner.")},
    "practical-doer": {"prefers": ("plain", "serious", "steps"), "home": "newcomer",
                       "persona": ("I like to get things done.", "I'm a hands-on person.")},
}
"""User groups: name -> {"prefers": one value per attribute, "home": persona, "persona": sentences}. Four
preference profiles, each held by two groups that describe themselves differently: the plain-serious-prose
profile and the three that differ from it in one attribute."""

COLUMNS = ["prompt", "chosen", "rejected", "attribute", "context", "split"]
_REQUIRED = ("id", "topic", "home", "prompt", "answer", "expert", "steps", "fun")
_RAMBLING_UTILITY = -10
STYLES_PER_PROMPT = 6
"""Attribute combinations each prompt has a response in (besides ``rambling``): as in real data, a prompt
is answered in a few styles, not all."""
RAMBLING_PAIR_WEIGHT = 0.1
"""Sampling weight of a pair against ``rambling`` relative to a pair of two attribute styles: the pairs
every group agrees on stay a minority, as the shared quality signal is in real data."""

# ---- context wordings: one per preferred attribute value ----
_CONTEXT_WORDS = {
    "plain": ("Skip the jargon.", "Keep it plain and non-technical.", "Use everyday words, no technical detail.",
              "I don't need the technical background."),
    "technical": ("Give me the precise technical detail, with the caveats.", "Don't simplify; I want the specifics.",
                  "Include the exact mechanisms and numbers.", "Technical depth is welcome."),
    "serious": ("Keep the tone serious, no jokes.", "A strictly professional tone, please.", "No emoji or banter.",
                "Just the facts, no humour."),
    "playful": ("Make it fun, jokes welcome.", "Keep it light and playful.", "A bit of humour and emoji is great.",
                "Feel free to be silly."),
    "prose": ("One paragraph is best, no lists.", "Answer in prose, not bullet points.", "No step lists, please.",
              "Write it as a single paragraph."),
    "steps": ("Lay it out as numbered steps.", "Step-by-step instructions suit me best.",
              "Break it into steps I can follow.", "Give me a checklist of steps."),
}

# ---- response wordings (variant picked by a hash of the prompt id, independent of the seed) ----
_PLAIN_OPEN = ("", "Short answer:", "In short:", "Simply put:", "Here's the answer:", "Basically:")
_PLAIN_CLOSE = ("", "", "Hope that helps.", "That's the main thing.")
_EXPERT_OPEN = ("Technically speaking:", "In precise terms:", "From a technical standpoint:", "Strictly speaking:", "")
_EXPERT_CLOSE = ("Edge cases vary; check the primary literature.", "Exact figures depend on the setting.",
                 "Caveat: specialist sources list exceptions.", "", "")
_PLAYFUL_OPEN = ("Ooh, love this one! 😄", "Ha, great question! 🎉", "Buckle up, buddy! 🚀", "Oh, this is a fun one!",
                 "Yesss, let's go! 🙌", "Fun fact time!")
_PLAYFUL_END = ("😎", "✨🥳", "Have fun with it!", "🙌🔥", "😂💯", "Enjoy!")
_STEPS_HEAD = ("Here's how, step by step:", "Steps:", "What to do:", "In practice:", "One step at a time:")
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


def _hash(key: str) -> int:
    """A stable hash of ``key`` (independent of the seed and of Python's hash randomisation)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def _pick(options: tuple, key: str):
    return options[_hash(key) % len(options)]


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.;!?])\s", text, maxsplit=1)[0]


def _steps(piece: dict, key: str) -> str:
    """The three steps in one of four formats: '1.', '1)', 'Step 1:' lines, or one 'First/Then/Finally' line."""
    steps = piece["steps"]
    form = _hash(key) % 4
    if form == 3:
        return " ".join(f"{w} {s[0].lower()}{s[1:]}" for w, s in zip(("First,", "Then,", "Finally,"), steps))
    marks = [("{}.", "{})", "Step {}:")[form].format(i) for i in range(1, len(steps) + 1)]
    return "\n".join(f"{m} {s}" for m, s in zip(marks, steps))


def style_values(style: str) -> tuple[str, str, str] | None:
    """A style's value per attribute (depth, tone, format); None for ``rambling``."""
    if style == "rambling":
        return None
    if style not in DEMO_STYLES:
        raise ValueError(f"unknown demo style {style!r}; expected one of {DEMO_STYLES}")
    return tuple(style.split("-"))  # type: ignore[return-value]


def utility(group: str, style: str) -> int:
    """How much ``group`` likes ``style``: +1 per attribute value it prefers, -1 per other (-3..3);
    ``rambling`` is last for every group."""
    values = style_values(style)
    if values is None:
        return _RAMBLING_UTILITY
    return sum(1 if v == p else -1 for v, p in zip(values, DEMO_GROUPS[group]["prefers"]))


def render_response(piece: dict, style: str) -> str:
    """The response to ``piece['prompt']`` in ``style`` (deterministic, seed-independent)."""
    pid = piece["id"]
    if style == "rambling":
        return (f"{_pick(_RAMBLING_OPEN, pid + '/rambling/open')} Some people would say this: "
                f"{piece['answer']} {_pick(_RAMBLING_CLOSE, pid + '/rambling/close')}")
    depth, tone, form = style_values(style)
    key = f"{pid}/{style}"
    if depth == "technical":
        body = [_pick(_EXPERT_OPEN, key + "/open"), _first_sentence(piece["expert"]), _pick(_EXPERT_CLOSE, key + "/close")]
    else:
        body = [_pick(_PLAIN_OPEN, key + "/open"), piece["answer"], _pick(_PLAIN_CLOSE, key + "/close")]
    text = " ".join(s for s in body if s)
    if form == "steps":
        text += "\n" + _pick(_STEPS_HEAD, key + "/head") + "\n" + _steps(piece, key + "/steps")
    if tone == "playful":
        text = f"{_pick(_PLAYFUL_OPEN, key + '/fun')} {piece['fun']}\n{text} {_pick(_PLAYFUL_END, key + '/end')}"
    return text


def group_context(group: str, key: str) -> str:
    """One wording of ``group``'s context: a persona sentence plus one wording per preferred attribute
    value, in an order picked by a hash of ``key`` (seed-independent)."""
    g = DEMO_GROUPS[group]
    words = [_pick(_CONTEXT_WORDS[v], f"{key}/{v}") for v in g["prefers"]]
    perm = list(itertools.permutations(words))
    return " ".join([_pick(g["persona"], key + "/persona"), *_pick(tuple(perm), key + "/order")])


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
            if rec["home"] not in DEMO_HOMES:
                raise ValueError(f"{p}:{lineno}: unknown home persona {rec['home']!r}; expected one of {DEMO_HOMES}")
            pieces.append(rec)
    ids = [r["id"] for r in pieces]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{p}: duplicate prompt ids")
    return pieces


def _labelers(home: str, rng: np.random.Generator, home_weight: float) -> list[str]:
    """2-4 distinct groups that label one prompt: drawn without replacement, the groups of the home
    persona sharing weight ``home_weight`` and the others sharing the rest equally."""
    names = list(DEMO_GROUPS)
    k = int(rng.choice([2, 3, 4], p=[0.3, 0.4, 0.3]))
    at_home = [DEMO_GROUPS[g]["home"] == home for g in names]
    n_home = sum(at_home)
    weights = np.array([home_weight / n_home if h else (1.0 - home_weight) / (len(names) - n_home) for h in at_home])
    chosen: list[str] = []
    for _ in range(k):
        w = weights.copy()
        for g in chosen:
            w[names.index(g)] = 0.0
        chosen.append(names[int(rng.choice(len(names), p=w / w.sum()))])
    return chosen


def prompt_styles(prompt_id: str) -> tuple[str, ...]:
    """The styles a prompt has responses in: :data:`STYLES_PER_PROMPT` of the eight combinations, picked
    by a hash of the prompt id (seed-independent), and ``rambling``."""
    combos = sorted(DEMO_STYLES[:-1], key=lambda s: _hash(f"{prompt_id}/{s}"))
    return tuple(s for s in DEMO_STYLES if s in combos[:STYLES_PER_PROMPT]) + ("rambling",)


def _style_pairs(group: str, styles: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every unordered pair of ``styles`` that ``group`` does not tie, as (preferred, other)."""
    out = []
    for a, b in itertools.combinations(styles, 2):
        ua, ub = utility(group, a), utility(group, b)
        if ua != ub:
            out.append((a, b) if ua > ub else (b, a))
    return out


def load_demo(path: str | None = None, *, n_prompts: int | None = None, seed: int = 0,
              test_fraction: float = 0.25, home_weight: float = 0.7, pairs_per_label: int = 10,
              label_noise: float = 0.10) -> pd.DataFrame:
    """The demo preference table: columns ``prompt, chosen, rejected, attribute, context, split``.

    path: a JSONL of hand-written pieces (or a folder holding ``demo_prompts.jsonl``); None = packaged.
    n_prompts: keep only this many prompts (balanced over home personas), for fast tests.
    seed: drives which prompts are kept, who labels each prompt, which style pairs, which labels are
    flipped and the split; the response texts never change.
    pairs_per_label: style pairs one labeling group compares on one prompt.
    label_noise: probability that a pair's label is flipped (train and test alike).
    Deterministic for given arguments.
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), not {label_noise}")
    pieces = load_demo_pieces(path)
    rng = np.random.default_rng(seed)

    # Balanced order: interleave the home personas, each in a seeded shuffled order.
    by_home = {h: [p for p in pieces if p["home"] == h] for h in DEMO_HOMES}
    for h in by_home:
        by_home[h] = [by_home[h][i] for i in rng.permutation(len(by_home[h]))]
    order = []
    for i in range(max(len(v) for v in by_home.values())):
        order += [v[i] for v in by_home.values() if i < len(v)]
    if n_prompts is not None:
        if n_prompts < 2:
            raise ValueError("n_prompts must be at least 2 (one train and one test prompt)")
        order = order[:n_prompts]

    # Split by prompt, stratified by home persona; at least one test and one train prompt.
    n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
    test_ids: set[str] = set()
    homes = [h for h in DEMO_HOMES if any(p["home"] == h for p in order)]
    per_home = {h: [p["id"] for p in order if p["home"] == h] for h in homes}
    quota = {h: test_fraction * len(v) for h, v in per_home.items()}
    alloc = {h: int(q) for h, q in quota.items()}
    for h in sorted(homes, key=lambda h: (alloc[h] - quota[h], homes.index(h))):  # largest remainders first
        if sum(alloc.values()) >= n_test:
            break
        alloc[h] += 1
    for h in homes:
        ids = per_home[h]
        test_ids.update(ids[i] for i in rng.permutation(len(ids))[: alloc[h]])

    rows = []
    for p in sorted(order, key=lambda r: r["id"]):
        responses = {s: render_response(p, s) for s in prompt_styles(p["id"])}
        # Per-prompt generator: a prompt's labels do not depend on which other prompts were kept.
        prng = np.random.default_rng([seed, _hash(p["id"])])
        split = "test" if p["id"] in test_ids else "train"
        for g in _labelers(p["home"], prng, home_weight):
            context = group_context(g, f"{p['id']}/{g}")
            options = _style_pairs(g, tuple(responses))
            weight = np.array([RAMBLING_PAIR_WEIGHT if "rambling" in o else 1.0 for o in options])
            size = min(pairs_per_label, len(options))
            for i in prng.choice(len(options), size=size, replace=False, p=weight / weight.sum()):
                good, bad = options[int(i)]
                if prng.random() < label_noise:
                    good, bad = bad, good
                rows.append((p["prompt"], responses[good], responses[bad], g, context, split))
    return pd.DataFrame(rows, columns=COLUMNS)
