"""`AdaptConfig`: every stage-2 default in one place; `KAblationConfig`: what `micro sweep-k` runs.
CLI flags override fields; nothing else has defaults."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ..heads.config import MixtureConfig, check_numbers
from ..methods import select_methods

ACQUIRE_RULES = ("random", "uncertainty", "disagreement", "bald")

#: Options that AdaptConfig no longer has, and what replaced each (a flag or config key naming one is
#: refused with this line; the measurements are in docs/decisions.md, "Removed options").
REMOVED_OPTIONS = {
    "router_min_steps": "a floor on router steps lost to `epochs` alone; the router runs `epochs` epochs",
    "weight_decay": "the router trains without weight decay",
    "refine_select": "budget-bt and micro-refine choose their precision by leave-one-out ('loo')",
    "refine_keep_prior_se": "micro-refine keeps its prior unless leave-one-out beats it by 1 SE",
    "refine_prior_pairs": "micro-refine's prior averages the routing over 256 training prompts of the context",
    "hyre_variant": "HyRe weights heads by their posterior ('posterior')",
    "baselines": "use --methods default,-baselines (or --no-baselines)",
    "save_routers": "a keyword of run_adapt(save_routers=...)",
    "plot": "a keyword of run_adapt(plot=...)",
    "batch_size": "micro's option: --set micro.batch_size=N",
    "lr": "micro's option: --set micro.lr=X",
    "hyre_shots": "HyRe's option: --set hyre.shots=N",
    "refine_grid": "--set micro-refine.grid=... and --set budget-bt.grid=...",
    "refine_scale_precision": "micro-refine's option: --set micro-refine.scale_precision=X",
    "oracle_grid": "the oracle's option: --set oracle.grid=...",
    "drm_components": "drm's option: --set drm.components=N",
    "drm_temperature": "drm's option: --set drm.temperature=X",
    "lore_rank": "lore's option: --set lore.rank=N",
    "lore_steps": "lore's option: --set lore.steps=N",
    "lore_lr": "lore's option: --set lore.lr=X",
    "acquire_batch": "--set acquire.batch=N",
    "acquire_random": "--set acquire.random=X",
}


@dataclass
class AdaptConfig:
    """How to adapt a stage-1 MiCRo router to user contexts (paper section 4.2, Algorithm 1, appendix B.1)
    and which methods to score beside it."""

    removed_options: ClassVar[dict[str, str]] = REMOVED_OPTIONS

    budgets: list[int] = field(default_factory=lambda: [50])
    """Labelled pairs per attribute given to stage 2 (paper: 50). Budgets of one seed are nested: the
    first 10 pairs of B = 25 are B = 10's."""

    seeds: int = 5
    """Independent repetitions (budget draw, batch order, HyRe shots); tables report mean ± std over them."""

    seed: int = 0
    """First seed; repetitions use seed, seed + 1, ... ."""

    methods: list[str] = field(default_factory=lambda: ["default"])
    """Methods to score: names or groups (default, paper, baselines, peers, upper, all); `-x` takes x
    out, e.g. default,-baselines. `micro methods` lists them with their options."""

    tau: float = 1.0
    """Hedge temperature of eq. 6 for micro's router labels (paper: 1e-3, 1e-4 on RPR; `--paper`)."""

    epochs: int = 10
    """Router epochs over the budget pairs; the soft labels are recomputed at the start of each (B.1)."""

    context_rate: float = 1.0
    """micro multiplies each context's routing by Hedge's weights over its budget pairs at this rate
    (micro.router.hedge.hedge_log_weights); 0: the router alone, the paper's micro (`--paper`)."""

    head_input: str = "response"
    """What the frozen heads score: 'response' ((prompt, response) embeddings), 'context' ((context +
    prompt, response), section 5.3; needs `micro embed --context-in-sequence`), or 'auto' (`--paper`)."""

    baseline_runs: list[str] = field(default_factory=list)
    """Stage-1 baseline run directories (`micro fit-mixture --method single|static|ensemble`); missing
    ones are fitted on the MiCRo run's stage-1 data."""

    eval_cache: str | None = None
    """Evaluate on another cache's test split (same backbone; the paper's Table 4). None: the adapt cache."""

    cross_dataset: bool = False
    """Allow an adapt cache built from another table than the run's stage-1 cache (paper Table 4)."""

    mask_heads: list[int] = field(default_factory=list)
    """Stage-1 heads given zero weight (e.g. heads a safety audit flagged); every method scores without them."""

    acquire: str = "random"
    """Which train pairs to ask for: 'random', or the active rules 'uncertainty', 'disagreement', 'bald'
    (micro.router.acquire)."""

    device: str = "cpu"
    """'cpu' or 'cuda'."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method options, {method: {option: value}}, e.g. {"drm": {"components": 4}}; on the command
    line `--set drm.components=4`."""

    def __post_init__(self) -> None:
        if isinstance(self.budgets, (str, bytes)) or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in self.budgets):
            raise ValueError(f"budgets must be a list of positive integers, not {self.budgets!r}")
        check_numbers(self, integers=("seeds", "seed", "epochs"), reals=("tau", "context_rate"))
        for name in ("seed", "context_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if isinstance(self.mask_heads, (str, bytes)) or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 0 for h in self.mask_heads):
            raise ValueError(f"mask_heads must be a list of head indices (integers >= 0), not {self.mask_heads!r}")
        self.mask_heads = sorted({int(h) for h in self.mask_heads})
        self.budgets = sorted(int(b) for b in self.budgets)
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive integers, not {self.budgets!r}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct, not {self.budgets!r}")
        if self.acquire not in ACQUIRE_RULES:
            raise ValueError(f"acquire must be one of {', '.join(ACQUIRE_RULES)}, not {self.acquire!r}")
        for name in ("seeds", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if not self.tau >= 0:
            raise ValueError(f"tau must be >= 0, not {self.tau!r}")
        if self.head_input not in ("response", "context", "auto"):
            raise ValueError(f"head_input must be 'response', 'context' or 'auto', not {self.head_input!r}")
        self.baseline_runs = [str(p) for p in self.baseline_runs]
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        self.methods = list(self.methods)
        select_methods(self.methods)  # unknown names are refused here, naming the known ones
        if not isinstance(self.options, dict) or not all(isinstance(v, dict) for v in self.options.values()):
            raise ValueError(f"options must map a method to its options, e.g. {{'drm': {{'components': 4}}}}, not {self.options!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> "AdaptConfig":
        """The paper's stage 2 (appendix B.1, section 5.3): tau = 1e-3 (the per-dataset value is
        `micro.paper.PRESETS`: 1e-4 on RPR), heads scoring context-augmented sequences when cached."""
        return cls(**{"tau": 1e-3, "head_input": "auto", "context_rate": 0.0, **overrides})

    @property
    def seed_values(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def method_names(self) -> list[str]:
        """The methods this config scores, in table order."""
        return select_methods(self.methods)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdaptConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class KAblationConfig:
    """What `micro sweep-k` fits (paper Figures 5-6): a stage-1 run per K and, with budgets, stage 2 on each.
    Its stage-1 and stage-2 fields default to MixtureConfig's and AdaptConfig's own."""

    k: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    """Numbers of heads K, one stage-1 run each (OUT/k<K>/)."""

    budgets: list[int] = field(default_factory=list)
    """Also adapt each K's run over these budgets (Figure 6), e.g. 10,25,50; empty: stage 1 only."""

    seeds: int = AdaptConfig.seeds
    """Stage-2 repetitions with budgets (AdaptConfig's seeds)."""

    epochs: int | None = MixtureConfig.epochs
    """Stage-1 passes over the train pairs (None: until the held-out NLL stops improving; MixtureConfig's epochs)."""

    seed: int = MixtureConfig.seed
    """Stage-1 seed (MixtureConfig's seed)."""

    def __post_init__(self) -> None:
        for name in ("k", "budgets"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"{name} must be a list of positive integers, not {values!r}")
        if not self.k:
            raise ValueError("k must list at least one number of heads, e.g. 1,3,5")
        self.stage1()  # the stage-1 and stage-2 fields are checked by their own configs
        self.stage2()

    def stage1(self, *, paper: bool = False) -> MixtureConfig:
        """The MixtureConfig fitted at every K (the paper's with `paper`)."""
        return (MixtureConfig.paper if paper else MixtureConfig)(epochs=self.epochs, seed=self.seed)

    def stage2(self, *, paper_tau: float | None = None) -> AdaptConfig:
        """The AdaptConfig each K's run is adapted with (the paper's, at this tau, with `paper_tau`)."""
        fields_ = {"seeds": self.seeds, **({"budgets": list(self.budgets)} if self.budgets else {})}
        return AdaptConfig(**fields_) if paper_tau is None else AdaptConfig.paper(tau=paper_tau, **fields_)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
