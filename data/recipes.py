"""Built-in recipes: known datasets turned into the preference table.

RECIPES maps a name to `loader(path=None) -> DataFrame`. With `path` a recipe reads local files
(a file, a folder laid out like the hub repo, or a `save_to_disk` folder); without it, it loads the hub
dataset through `datasets` (micro.data.source).
Recipes read public data we do not control, so bad rows are dropped with a warning instead of
stopping the load (see table.build_table, strict=False).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .errors import PreferenceDataError, missing_column
from .columns import ColumnKeys
from .formats import table_from_parts
from .source import Part, file_type, open_source
from .table import WHERE, build_table, from_frame

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
# The paper's Table 6: one context per HelpSteer2 attribute.
HELPSTEER2_CONTEXTS = {
    "helpfulness": "The assistant should provide users with accurate, relevant, and up-to-date information, "
                   "ensuring that the content is positive, engaging, educational, and truly helpful.",
    "correctness": "The assistant must base responses on verified facts and cover all aspects of the prompt "
                   "fully—avoiding errors, omissions, hallucinations, or irrelevant details.",
    "complexity": "The assistant should employ sophisticated language with elevated vocabulary, appropriate for "
                  "adults with advanced education or subject matter experts.",
    "verbosity": "The assistant should provide an expansive, detailed response that thoroughly elaborates on the "
                 "topic, including additional context and examples beyond the basic answer.",
    "coherence": "The assistant's responses should be logically structured, easy to follow, and free of "
                 "contradictions, redundancies, or abrupt style shifts.",
}

# allenai/reward-bench subsets grouped into the leaderboard's sections.
REWARDBENCH_SECTIONS = {
    **dict.fromkeys(["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"], "Chat"),
    **dict.fromkeys(["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                     "llmbar-adver-GPTOut", "llmbar-adver-manual"], "Chat Hard"),
    **dict.fromkeys(["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
                     "donotanswer"], "Safety"),
    **dict.fromkeys(["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"], "Reasoning"),
}


def _frames(path: str | None, repo_id: str | None, *, name: str, data_dir: str | None = None,
            split: str | None = None) -> list[Part]:
    if path is None and repo_id is None:
        raise PreferenceDataError(f"recipe '{name}' has no hub copy; pass --path (path= in Python) pointing at its files")
    return open_source(path if path is not None else repo_id, data_dir=data_dir, split=split)


def _require(frame: Part, columns: list[str], recipe: str) -> None:
    present = frame.columns
    for column in columns:
        if column not in present:
            err = missing_column(column, present, frame.label, None)
            raise PreferenceDataError(f"{err}; recipe '{recipe}' expects columns {', '.join(columns)}")


# ---- HelpSteer2 -------------------------------------------------------------------------------

def _helpsteer2_split(frame: Part) -> str:
    """HelpSteer2's validation split (the subset's eval.json) is the paper's test set."""
    name = (frame.split or "").lower()
    return "train" if name == "train" else "test" if name in ("validation", "eval", "test") else name or "train"


def _rating(value, where: str, attribute: str, scale: float) -> int:
    try:
        rating = float(value) * scale
    except (TypeError, ValueError):
        raise PreferenceDataError(f"{where}: rating '{attribute}' is {value!r}, not a number") from None
    if abs(rating - round(rating)) > 1e-6:
        raise PreferenceDataError(f"{where}: rating '{attribute}' = {value!r} is not a whole 0-4 score"
                                  + (" after multiplying by 4" if scale != 1 else ""))
    return round(rating)


def _helpsteer2_groups(frame: Part):
    """(prompt, responses, ratings, where) per prompt, from either layout."""
    columns = frame.columns
    if "responses" in columns and "labels" in columns:  # subset layout: one row per prompt, ratings / 4
        for row, record in enumerate(frame.records, start=1):
            where = frame.where(row)
            responses, labels = list(record["responses"]), list(record["labels"])
            if len(responses) != len(labels):
                raise PreferenceDataError(f"{where}: {len(responses)} responses but {len(labels)} label sets")
            ratings = [{a: _rating(lab.get(a), where, a, 4.0) for a in HELPSTEER2_ATTRIBUTES} for lab in labels]
            yield record["prompt"], responses, ratings, where
        return
    _require(frame, ["prompt", "response", *HELPSTEER2_ATTRIBUTES], "helpsteer2")
    numbered = enumerate(frame.records, start=1)
    for prompt, group in itertools.groupby(numbered, key=lambda item: item[1]["prompt"]):  # consecutive rows
        group = list(group)
        where = f"{frame.label} rows {group[0][0]}-{group[-1][0]}"
        ratings = [{a: _rating(r.get(a), frame.where(i), a, 1.0) for a in HELPSTEER2_ATTRIBUTES} for i, r in group]
        yield prompt, [r["response"] for _, r in group], ratings, where


def binarize_helpsteer2(prompt, responses, ratings, split: str, where: str) -> list[dict]:
    """The paper's binarization: per attribute, the higher-rated response of each pair is chosen
    (ties dropped); in train, pairs where one response wins on all five attributes are dropped
    (they say nothing about which attribute matters)."""
    rows = []
    for i, j in itertools.combinations(range(len(responses)), 2):
        signs = {a: (ratings[i][a] > ratings[j][a]) - (ratings[i][a] < ratings[j][a]) for a in HELPSTEER2_ATTRIBUTES}
        unanimous = len(set(signs.values())) == 1 and 0 not in signs.values()
        if split == "train" and unanimous:
            continue
        for attribute, sign in signs.items():
            if sign == 0:
                continue
            win, lose = (i, j) if sign > 0 else (j, i)
            rows.append({"prompt": prompt, "chosen": responses[win], "rejected": responses[lose],
                         "attribute": attribute, "context": HELPSTEER2_CONTEXTS[attribute], "split": split,
                         WHERE: f"{where} ({attribute})"})
    return rows


def helpsteer2(path: str | None = None) -> pd.DataFrame:
    """HelpSteer2 (nvidia/HelpSteer2, or a folder like the shared subset): per-attribute pairs, Table 6 contexts."""
    frames = _frames(path, "nvidia/HelpSteer2", name="helpsteer2")
    rows = []
    for frame in frames:
        split = _helpsteer2_split(frame)
        for prompt, responses, ratings, where in _helpsteer2_groups(frame):
            rows += binarize_helpsteer2(prompt, responses, ratings, split, where)
    return build_table(rows, source="helpsteer2", strict=False)


# ---- RPR ----------------------------------------------------------------------------------------

RPR_COLUMNS = ["prompt", "response_a", "response_b", "criteria_x", "criteria_y", "category_x", "category_y"]
# The paper's nine RPR attributes (its Tables 3 and 5), each with the words that identify its category.
RPR_PAPER_ATTRIBUTES = {
    "Clarity & Conciseness": ("clarity", "conciseness"),
    "Creativity & Originality": ("creativity", "originality"),
    "Scientific Rigor": ("scientific", "rigor"),
    "User-Friendliness": ("user", "friendliness"),
    "Narrative & Storytelling": ("narrative", "storytelling"),
    "Pedagogical Effectiveness": ("pedagogical", "effectiveness"),
    "Linguistic Creativity": ("linguistic", "creativity"),
    "Factual Accuracy": ("factual", "accuracy"),
    "Humor & Entertainment": ("humor",),
}


def _rpr_attribute(category) -> str | None:
    """The paper attribute of an RPR category (its words, case and punctuation ignored), or None."""
    words = set("".join(c if c.isalnum() else " " for c in str(category).lower()).split())
    for name, needed in RPR_PAPER_ATTRIBUTES.items():
        if set(needed) <= words and not (name == "Creativity & Originality" and "linguistic" in words):
            return name
    return None


def rpr(path: str | None = None) -> pd.DataFrame:
    """RPR (microsoft/rpr): two pairs per row, kept when their category is one of the paper's 9 attributes."""
    # The dataset has no preference column: by construction (Pitis et al. 2024) response_a is the
    # preferred completion under criteria_x and response_b under criteria_y. The paper evaluates 9
    # attributes (Tables 3 and 5: 6,750 train / 699 test pairs); a pair whose category is none of them is
    # dropped (counted in a warning), and kept pairs are named by the paper's attribute.
    rows, dropped = [], {}
    for frame in _frames(path, "microsoft/rpr", name="rpr"):
        _require(frame, RPR_COLUMNS, "rpr")
        split = frame.split or "train"
        for n, r in enumerate(frame.records, start=1):
            where = frame.where(n)
            for chosen, rejected, side in (("response_a", "response_b", "x"), ("response_b", "response_a", "y")):
                attribute = _rpr_attribute(r[f"category_{side}"])
                if attribute is None:
                    dropped[str(r[f"category_{side}"])] = dropped.get(str(r[f"category_{side}"]), 0) + 1
                    continue
                rows.append({"prompt": r["prompt"], "chosen": r[chosen], "rejected": r[rejected],
                             "attribute": attribute, "context": r[f"criteria_{side}"], "split": split,
                             WHERE: f"{where} (criteria_{side})"})
    warnings = []
    if dropped:
        top = ", ".join(f"{c!r} ({k})" for c, k in sorted(dropped.items(), key=lambda kv: -kv[1])[:5])
        warnings.append(f"rpr: dropped {sum(dropped.values())} pairs of {len(dropped)} categories outside the paper's 9 "
                        f"attributes (most: {top})")
    return build_table(rows, source="rpr", strict=False, warnings=warnings)


# ---- explicit / implicit pair datasets ------------------------------------------------------------

def preference_700k(path: str | None = None) -> pd.DataFrame:
    """preference-700K (hendrydong/preference_700K): chosen/rejected conversations, prompt = shared messages."""
    frames = _frames(path, "hendrydong/preference_700K", name="preference-700k")
    return table_from_parts(frames, source="preference-700k", strict=False)


HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


def _hh_attribute(folder: str) -> str:
    """HH-RLHF's subsets are helpfulness or harmlessness data; the folder name says which."""
    name = folder.lower()
    return "harmless" if "harmless" in name else "helpful" if "helpful" in name else "default"


def hh_rlhf(path: str | None = None) -> pd.DataFrame:
    """HH-RLHF (Anthropic/hh-rlhf): implicit transcripts; attribute helpful/harmless from the folder."""
    local = Path(path).resolve() if path is not None else None
    # the hub layout has one folder per subset (red-team-attempts is another format, left out)
    subsets = [s for s in HH_SUBSETS if local is None or (local / s).is_dir()] or [None]
    attributes = {part.label: (part, _hh_attribute(s or (local.parent.name if local.is_file() else local.name)))
                  for s in subsets for part in _frames(path, "Anthropic/hh-rlhf", name="hh-rlhf", data_dir=s)}
    return table_from_parts([part for part, _ in attributes.values()], source="hh-rlhf", strict=False,
                            attribute_of=lambda part: attributes[part.label][1])


def llmbar(path: str | None = None) -> pd.DataFrame:
    """LLMBar (princeton-nlp/LLMBar json files; local only): attribute = subset from the file name."""
    if path is None:
        _frames(path, None, name="llmbar")  # says that LLMBar needs --path
    local = Path(path)
    files = [local] if local.is_file() else sorted(p for p in local.glob("*") if file_type(p) == "json")
    rows = []
    for file, frame in ((f, part) for f in files for part in open_source(f)):
        _require(frame, ["input", "output_1", "output_2", "label"], "llmbar")
        subset = file.name.split(".")[0].removeprefix("llmbar_")
        for n, r in enumerate(frame.records, start=1):
            label = str(r["label"]).strip()
            if label not in ("1", "2"):
                raise PreferenceDataError(f"{frame.where(n)}: label is {r['label']!r}; LLMBar labels are 1 or 2")
            win, lose = ("output_1", "output_2") if label == "1" else ("output_2", "output_1")
            rows.append({"prompt": r["input"], "chosen": r[win], "rejected": r[lose], "attribute": subset,
                         "context": None, "split": "test", WHERE: frame.where(n)})
    return build_table(rows, source="llmbar", strict=False)


# ---- PKU-SafeRLHF ---------------------------------------------------------------------------------

# The paper's Table 6 context for safety (used when HelpSteer2 is combined with PKU-SafeRLHF, Table 10).
SAFETY_CONTEXT = ("The assistant must ensure all responses are safe and respectful, strictly avoiding any harmful, "
                  "toxic, or illegal information or instructions.")
PKU_COLUMNS = ["prompt", "response_0", "response_1", "safer_response_id"]


def pku_saferlhf(path: str | None = None) -> pd.DataFrame:
    """PKU-SafeRLHF (PKU-Alignment/PKU-SafeRLHF): the safer response is chosen; attribute safety, Table 6 context."""
    rows = []
    for frame in _frames(path, "PKU-Alignment/PKU-SafeRLHF", name="pku-saferlhf"):
        _require(frame, PKU_COLUMNS, "pku-saferlhf")
        for n, r in enumerate(frame.records, start=1):
            safer = str(r["safer_response_id"]).strip()
            if safer not in ("0", "1"):
                raise PreferenceDataError(f"{frame.where(n)}: safer_response_id is {r['safer_response_id']!r}; it must be 0 or 1")
            rows.append({"prompt": r["prompt"], "chosen": r[f"response_{safer}"], "rejected": r[f"response_{1 - int(safer)}"],
                         "attribute": "safety", "context": SAFETY_CONTEXT, "split": frame.split or "train",
                         WHERE: frame.where(n)})
    return build_table(rows, source="pku-saferlhf", strict=False)


def _rewardbench(path: str | None, sections: bool) -> pd.DataFrame:
    frames = _frames(path, "allenai/reward-bench", name="rewardbench", split="filtered")
    for frame in frames:
        _require(frame, ["prompt", "chosen", "rejected", "subset"], "rewardbench")
        if sections:
            for r in frame.records:
                r["subset"] = REWARDBENCH_SECTIONS.get(r["subset"], r["subset"])
    # every RewardBench pair is test data, whatever its split is called
    return table_from_parts(frames, ColumnKeys(attribute="subset"), source="rewardbench", strict=False,
                            default_split="test")


def rewardbench(path: str | None = None) -> pd.DataFrame:
    """RewardBench (allenai/reward-bench, filtered): attribute = subset, split test."""
    return _rewardbench(path, sections=False)


def rewardbench_sections(path: str | None = None) -> pd.DataFrame:
    """RewardBench with attribute = section (Chat, Chat Hard, Safety, Reasoning)."""
    return _rewardbench(path, sections=True)


def demo(path: str | None = None) -> pd.DataFrame:
    """Synthetic eight-group demo data (micro.data.demo), for trying the pipeline in minutes."""
    try:
        from .demo import load_demo
    except ImportError as exc:
        raise PreferenceDataError(f"the demo recipe is not available in this install ({exc})") from None
    return from_frame(load_demo(path=path), source="demo")


RECIPES: dict[str, Callable[..., pd.DataFrame]] = {
    "helpsteer2": helpsteer2,
    "rpr": rpr,
    "preference-700k": preference_700k,
    "hh-rlhf": hh_rlhf,
    "pku-saferlhf": pku_saferlhf,
    "llmbar": llmbar,
    "rewardbench": rewardbench,
    "rewardbench-sections": rewardbench_sections,
    "demo": demo,
}


def describe_recipes() -> dict[str, str]:
    """Recipe name -> the first line of its docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in RECIPES.items()}
