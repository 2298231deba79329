"""The paper's per-dataset settings (`--paper`), and which dataset a cache holds.

Bottom layer: imports nothing of micro. Sources in the paper:
- K: Table 7 lists 10 MiCRo heads on RPR, Table 8 lists 5 on HelpSteer2; the paper gives no K for
  preference-700K, so it keeps the 10 of its released configuration.
- tau (appendix B.1): 1e-3 on HelpSteer2, 1e-4 on RPR, 1e-3 cross-dataset (Table 4: trained on
  HelpSteer2 or preference-700K, adapted and evaluated on RPR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Preset:
    k: int
    tau: float
    source: str


PRESETS: dict[str, Preset] = {
    "helpsteer2": Preset(5, 1e-3, "Table 8 (5 heads), appendix B.1 (tau 1e-3)"),
    "rpr": Preset(10, 1e-4, "Table 7 (10 heads), appendix B.1 (tau 1e-4)"),
    "preference-700k": Preset(10, 1e-3, "no K in the paper: 10; appendix B.1 cross-dataset tau 1e-3"),
    "cross-dataset": Preset(10, 1e-3, "Table 4, appendix B.1 (tau 1e-3 for cross-dataset adaptation)"),
    "other": Preset(10, 1e-3, "no preset for this data: K 10, tau 1e-3 (the HelpSteer2 / cross-dataset value)"),
}

# Attribute names that identify a cache's recipe when its metadata does not record the source.
HELPSTEER2_ATTRIBUTES = frozenset({"helpfulness", "correctness", "coherence", "complexity", "verbosity"})
RPR_ATTRIBUTES = frozenset({
    "Clarity & Conciseness", "Creativity & Originality", "Scientific Rigor", "User-Friendliness",
    "Narrative & Storytelling", "Pedagogical Effectiveness", "Linguistic Creativity", "Factual Accuracy",
    "Humor & Entertainment",
})


def dataset_of(meta: Mapping[str, Any]) -> str:
    """The paper dataset a cache holds: its recorded source when that is one of the presets, else
    recognised from its attribute names; 'other' when neither says."""
    source = str(meta.get("source") or "").lower()
    if source in PRESETS:
        return source
    attributes = set(meta.get("attributes") or [])
    if attributes and attributes <= HELPSTEER2_ATTRIBUTES:
        return "helpsteer2"
    if attributes and attributes <= RPR_ATTRIBUTES:
        return "rpr"
    return "other"


def preset(name: str) -> Preset:
    """The preset named `name` (ValueError listing the names)."""
    if name not in PRESETS:
        raise ValueError(f"--paper-dataset {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def choose(meta: Mapping[str, Any], override: str | None = None, *, cross_dataset: bool = False) -> tuple[str, Preset, str]:
    """(name, preset, note) for a cache. `override` (--paper-dataset) wins; `cross_dataset` (the cache
    is not the stage-1 run's data) picks the cross-dataset preset."""
    if override is not None:
        chosen = preset(override)
        return override, chosen, f"--paper preset {override!r} (given): K {chosen.k}, tau {chosen.tau:g}; {chosen.source}."
    name = "cross-dataset" if cross_dataset else dataset_of(meta)
    chosen = PRESETS[name]
    how = "the cache is not the stage-1 run's data" if cross_dataset else "from the cache's recipe / attributes"
    return name, chosen, (f"--paper preset {name!r} ({how}): K {chosen.k}, tau {chosen.tau:g}; {chosen.source}. "
                          "Override with --paper-dataset NAME.")


def stage1_overrides(meta: Mapping[str, Any], override: str | None = None) -> tuple[dict[str, Any], str]:
    """({"k": K} of the cache's preset, the note) for `micro fit-mixture --paper`."""
    _, chosen, note = choose(meta, override)
    return {"k": chosen.k}, note
