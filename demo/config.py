"""`DemoConfig`: every default of `micro demo` in one place (no torch import, so the CLI reads it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """What `micro demo` runs; the defaults are the README's first command."""

    out: str = "micro-demo"
    """Folder for the cache, the runs, the adaptation results and report.md / report.html."""
    model: str = "minilm"
    """Backbone for `micro embed` (the packaged all-MiniLM-L6-v2 runs offline on a CPU)."""
    n_prompts: int | None = None
    """Cut the demo data down to this many prompts (tests); None keeps all of it."""
    data_seed: int = 0
    """Seed of the demo data generator (which groups label which prompt, which pairs, which labels are
    flipped, the split)."""
    budgets: list[int] = field(default_factory=lambda: [1, 5, 10, 25, 50])
    """Stage-2 labelled pairs per group."""
    seeds: int = 3
    """Stage-2 repetitions (mean ± std)."""
    stage1_epochs: int | None = None
    """None (default): stage 1 trains until its held-out values stop improving (MixtureConfig's default
    early stopping); an int: that many fixed epochs."""
    zero_label: bool = True
    """Also score users never seen at all: for each group, stage 1 is fitted without that group's pairs and
    the group is routed by its context alone (zero labels; a fresh per-group head cannot exist there)."""
    paper: bool = False
    """Use the paper's exact stage-1 and stage-2 configuration instead of micro's defaults."""
