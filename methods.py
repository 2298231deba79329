"""The one registry of the methods micro fits and scores: name, stage, label, description, order.

Bottom layer: imports nothing of micro, so every layer (heads, router, demo, cli) reads it.

Two kinds of names live here and must not be confused:
- `FIT_METHODS`: what `micro fit-mixture --method` trains (stage-1 models, one run directory each);
- `METHODS`: what `micro adapt` scores and reports (rows of the results tables), each with the stage-1
  fit it reads (`fit`), the stage that makes it (1: no stage-2 training; 2: trained on the budget
  pairs), whether it needs group labels beyond the user context (`needs_group_labels`: the budget is
  drawn per group, test shots are labelled per group, or the head is fitted per group), and where it
  sits in the tables (`block`: before the budget rows, per budget, or after as an upper line).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Stage-1 fits (`MixtureConfig.method`).
FIT_METHODS = ("micro", "single", "static", "ensemble")
#: Stage-1 fits that only serve as baselines of stage 2 (a `micro` run is the one stage 2 adapts).
BASELINE_FITS = ("single", "static", "ensemble")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    description: str
    stage: int
    block: str  # "fixed" (budget-free rows), "budget" (one row per budget), "upper" (upper lines)
    fit: str | None  # the stage-1 fit it reads (None: none)
    needs_group_labels: bool
    uses_test_shots: bool = False  # scored on the test pairs minus its labelled shots (HyRe)


# Reading order of every table: budget-free baselines, then per budget, then upper lines.
_REGISTRY = (
    Method("single", "Single Reward", "Single BT head (one global preference)", 1, "fixed", "single", False),
    Method("static", "Static Mixture", "Static mixture (MaxMin-style, no routing)", 1, "fixed", "static", False),
    Method("ensemble-best", "Shared-Base Best Head", "Shared-base ensemble, best head per group", 1, "fixed", "ensemble", True),
    Method("hyre", "HyRe", "HyRe: ensemble reweighted from 16 labelled test pairs", 1, "fixed", "ensemble", True, True),
    Method("micro-hyre", "MiCRo-HyRe", "MiCRo heads reweighted from 16 labelled test pairs", 1, "fixed", "micro", True, True),
    Method("budget-bt", "Budget BT", "Fresh BT head per group on the budget pairs only", 2, "budget", None, True),
    Method("micro", "MiCRo", "MiCRo: stage-2 router with the user context, times Hedge over its budget pairs", 2, "budget", "micro", False),
    Method("micro-refine", "MiCRo-refine", "MiCRo + refined head per context", 2, "budget", "micro", True),
    Method("drm", "DRM", "Decomposed reward models: PCA heads of the diffs, weighted on the budget pairs (Luo et al. 2025)", 2, "budget", None, True),
    Method("lore", "LoRe", "LoRe: low-rank basis from the training groups, user weights on the budget pairs (Bose et al. 2025)", 2, "budget", None, True),
    Method("stage1-best", "MiCRo best head (oracle selection)", "MiCRo stage-1 best head per group (oracle choice)", 1, "upper", "micro", True),
    Method("oracle", "Oracle BT (all train pairs)", "BT head per group on all its training pairs (upper line)", 1, "upper", None, True),
)

REGISTRY: dict[str, Method] = {m.name: m for m in _REGISTRY}
#: Every scored method, in table order.
METHODS: tuple[str, ...] = tuple(REGISTRY)


def method(name: str) -> Method:
    """The registry entry of a scored method (KeyError names the known ones)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def order(name: str) -> int:
    """Position in the tables (unknown names last)."""
    return METHODS.index(name) if name in REGISTRY else len(METHODS)


def in_block(block: str) -> tuple[str, ...]:
    """The methods of one table block ("fixed", "budget", "upper"), in table order."""
    return tuple(m.name for m in _REGISTRY if m.block == block)
