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
    plugin: str = ""  # "module:Class" of its `micro.router.plugin.Plugin` (imported when it runs)
    uses_test_shots: bool = False  # scored on the test pairs minus its labelled shots (HyRe)
    saw_scored_labels: bool = False  # learned from the scored groups' labels before the budget (marked in tables)


_M = "micro.router.methods."
# Reading order of every table: budget-free baselines, then per budget, then upper lines.
# Adding a method: one module with a Plugin subclass, and one line here (or `register` from outside).
_REGISTRY = [
    Method("single", "Single Reward", "Single BT head (one global preference)", 1, "fixed", "single", False, _M + "stage1:Single"),
    Method("static", "Static Mixture", "Static mixture (MaxMin-style, no routing)", 1, "fixed", "static", False, _M + "stage1:Static"),
    Method("ensemble-best", "Shared-Base Best Head", "Shared-base ensemble, best head per group", 1, "fixed", "ensemble", True, _M + "stage1:EnsembleBest"),
    Method("hyre", "HyRe", "HyRe: ensemble reweighted from 16 labelled test pairs", 1, "fixed", "ensemble", True, _M + "hyre:Hyre", True),
    Method("micro-hyre", "MiCRo-HyRe", "MiCRo heads reweighted from 16 labelled test pairs", 1, "fixed", "micro", True, _M + "hyre:MicroHyre", True),
    Method("budget-bt", "Budget BT", "Fresh BT head per group on the budget pairs only", 2, "budget", None, True, _M + "budget_bt:BudgetBt"),
    Method("micro", "MiCRo", "MiCRo: stage-2 router with the user context, times Hedge over its budget pairs", 2, "budget", "micro", False, _M + "micro:Micro"),
    Method("micro-refine", "MiCRo-refine", "MiCRo + refined head per context", 2, "budget", "micro", True, _M + "refine:MicroRefine"),
    Method("drm", "DRM", "Decomposed reward models: PCA heads of the diffs, weighted on the budget pairs (Luo et al. 2025)", 2, "budget", None, True, _M + "peers:Drm"),
    Method("lore", "LoRe", "LoRe: low-rank basis from the other training groups, user weights on the budget pairs (Bose et al. 2025)", 2, "budget", None, True, _M + "peers:Lore"),
    Method("lore-seen", "LoRe (seen groups)", "LoRe with a basis learned on every training group, the scored ones included", 2, "budget", None, True, _M + "peers:LoreSeen", saw_scored_labels=True),
    Method("stage1-best", "MiCRo best head (oracle selection)", "MiCRo stage-1 best head per group (oracle choice)", 1, "upper", "micro", True, _M + "upper:Stage1Best"),
    Method("oracle", "Oracle BT (all train pairs)", "BT head per group on all its training pairs (upper line)", 1, "upper", None, True, _M + "upper:Oracle", saw_scored_labels=True),
]

#: `--methods` groups; a name or group after "-" is taken out (e.g. "default,-baselines").
GROUPS: dict[str, tuple[str, ...]] = {
    "paper": ("single", "static", "ensemble-best", "hyre", "micro"),
    "baselines": ("single", "static", "ensemble-best", "hyre"),
    "upper": ("stage1-best", "oracle"),
    "peers": ("drm", "lore", "lore-seen"),
    "default": ("single", "static", "ensemble-best", "hyre", "micro-hyre", "budget-bt", "micro", "micro-refine", "stage1-best", "oracle"),
}


def register(entry: Method) -> None:
    """Add a scored method (its `plugin` names a `micro.router.plugin.Plugin` subclass); it runs when
    `--methods` names it, and `all` includes it. A name already registered is refused."""
    if entry.name in REGISTRY or entry.name in GROUPS or entry.name == "all":
        raise ValueError(f"method {entry.name!r} is already registered")
    if ":" not in entry.plugin:
        raise ValueError(f"method {entry.name!r}: plugin must be 'module:Class', not {entry.plugin!r}")
    at = next((i for i, m in enumerate(_REGISTRY) if m.block == "upper"), len(_REGISTRY)) if entry.block != "upper" else len(_REGISTRY)
    _REGISTRY.insert(at, entry)
    REGISTRY.clear()
    REGISTRY.update({m.name: m for m in _REGISTRY})
    global METHODS
    METHODS = tuple(REGISTRY)


def unregister(name: str) -> None:
    """Remove a method added by `register` (micro's own methods stay)."""
    if name in REGISTRY and not REGISTRY[name].plugin.startswith(_M):
        _REGISTRY.remove(REGISTRY.pop(name))
        global METHODS
        METHODS = tuple(REGISTRY)


def select_methods(spec: list[str] | tuple[str, ...]) -> list[str]:
    """The methods that `--methods` names (names, groups, `all`; `-x` takes x out), in table order."""
    chosen: list[str] = []
    for item in spec:
        drop = item.startswith("-")
        name = item[1:] if drop else item
        names = tuple(REGISTRY) if name == "all" else GROUPS.get(name, (name,))
        for n in names:
            method(n)
        chosen = [m for m in chosen if m not in names] if drop else chosen + [n for n in names if n not in chosen]
    if not chosen:
        raise ValueError(f"--methods {','.join(spec)} selects no method; groups: {', '.join(GROUPS)}, all")
    return sorted(chosen, key=order)


REGISTRY: dict[str, Method] = {m.name: m for m in _REGISTRY}
#: Every scored method, in table order.
METHODS: tuple[str, ...] = tuple(REGISTRY)


def method(name: str) -> Method:
    """The registry entry of a scored method (KeyError names the known ones)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}; groups: {', '.join(GROUPS)}, all") from None


def order(name: str) -> int:
    """Position in the tables (unknown names last)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


def in_block(block: str) -> tuple[str, ...]:
    """The methods of one table block ("fixed", "budget", "upper"), in table order."""
    return tuple(m.name for m in _REGISTRY if m.block == block)
