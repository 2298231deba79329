"""`AdaptConfig`: every stage-2 default in one place; `KAblationConfig`: what `micro sweep-k` runs.
CLI flags override fields; nothing else has defaults."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..heads.config import MixtureConfig, check_numbers

HYRE_VARIANTS = ("posterior", "best")
REFINE_SELECT = ("cv5", "loo", "pooled-loo")  # how budget-bt / micro-refine choose their prior precision
ACQUIRE_RULES = ("random", "uncertainty", "disagreement", "bald")


@dataclass
class AdaptConfig:
    """How to adapt a stage-1 MiCRo router to user contexts (paper section 4.2, Algorithm 1, appendix B.1)
    and which baselines to score beside it."""

    budgets: list[int] = field(default_factory=lambda: [50])
    """Labelled (context + prompt, chosen, rejected) pairs per attribute given to stage 2 (paper: 50;
    Figure 4 sweeps 10..150). Budgets of one seed are nested: the first 10 pairs of B=25 are B=10's."""

    seeds: int = 5
    """Independent repetitions (budget draw, batch order, HyRe shots); tables report mean ± std over them."""

    seed: int = 0
    """First seed; repetitions use seed, seed + 1, ... ."""

    tau: float = 1.0
    """Hedge temperature of eq. 6. Its scale is that of the per-head BT losses: tau << |L_ik - L_ij|
    makes each soft label one-hot on the pair's best head (the router then chases each pair's
    largest-margin head and gets worse with more budget), tau >> keeps the router's current prediction.
    Default 1.0 (docs/results.md has the comparison); the paper's values are
    1e-3 (HelpSteer2, cross-dataset) and 1e-4 (RPR): `AdaptConfig.paper()` / `micro adapt --paper`."""

    epochs: int = 10
    """Router epochs over the budget pairs; soft labels are recomputed once at the start of each (B.1).
    Each epoch is one more Hedge (mirror-descent) step on the labels, so the epoch count is the router's
    regulariser, not an optimisation length to converge. Measured on planted caches and the demo
    (docs/results.md): where stage 1
    already routes on the contexts, 5 epochs raised micro by up to 2 points and 20 epochs or a floor of
    30-100 steps (router_min_steps) lowered it by up to 5 at B <= 10; where a context is new to stage 1
    it went the other way (5 epochs -1, 20 epochs +2, a 30-step floor +4 on the demo). No rule won
    everywhere, so the paper's 10 are kept."""

    context_rate: float = 1.0
    """micro's context factor (beyond the paper): each context's routing is multiplied by Hedge's weights
    over its budget pairs, exp(-eta * sum_i L_ik) with eta = context_rate * sqrt(8 ln K / B)
    (micro.router.hedge.context_log_weights), at scoring time and in micro-refine's prior. The router
    learns each pair's label one pair at a time and carries a context's evidence only as far as it
    generalises: measured on planted caches and the demo (docs/results.md). 0: the router alone (the
    paper's micro; `--paper`)."""

    router_min_steps: int = 0
    """At least this many router steps: the router runs max(epochs, ceil(router_min_steps / steps per
    epoch)) epochs (micro.router.hedge.router_epochs). 0 (the default and the paper's): `epochs` alone;
    a floor was measured and lost (see epochs)."""

    batch_size: int = 32
    """Pairs per router step (B.1)."""

    lr: float = 2e-3
    """AdamW learning rate of the router (stage 1's rate, B.1; the paper gives none for stage 2). The soft
    labels are per pair and the router also sees the prompt, so a fast router memorises each pair's
    label through the prompt part of its input instead of averaging over the context: on simulated
    data (planted heads, tau 1, B = 50/group) test accuracy was 0.862 at 1e-3 and 2e-3, 0.77 at 1e-2
    and unstable at 1e-1; 3e-4 underfits (0.75). Steps grow with the budget (10 epochs x A*B/32)."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay on the router (0: the router stays a copy of stage 1 plus updates)."""

    hyre_shots: int = 16
    """Labelled TEST pairs per attribute for HyRe / MiCRo-HyRe (paper: 16). Only those two methods are
    scored on the test pairs minus their shots; every other method on all of them (as in the paper)."""

    hyre_variant: str = "posterior"
    """'posterior': weights ∝ exp(-sum of each head's BT loss on the shots), the Bayesian posterior
    over heads under a uniform prior (HyRe, Lee et al. 2024). 'best': all weight on the head with the
    most shots right (ties: lower BT loss)."""

    refine_grid: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 1000.0)
    """Candidate prior precisions for budget-bt and micro-refine, in units of 1/mean||d||^2 (so
    lambda = c / prior margin variance and the grid is embedding-scale free). Each attribute's c is
    chosen by held-out BT loss on its budget pairs (refine_select), so the budget decides how far a
    head moves from its prior."""

    refine_select: str = "loo"
    """How budget-bt and micro-refine choose c from refine_grid (micro.router.baselines.fit_map_heads):
    'loo' approximate leave-one-out BT loss per context (one fit per grid value, a Newton step per
    left-out pair); 'cv5' 5-fold cross-validated BT loss per context (the rule before); 'pooled-loo'
    one c per seed shared by all contexts, by their summed leave-one-out loss. Measured on the same
    budget pairs (docs/results.md):
    accuracy equal within noise at B = 5..50 on planted caches and the demo, but cv5's choice follows
    the order of the pairs (its folds): on the same pairs in another order it changed c for 33-87 % of
    the contexts at B = 10..50, leave-one-out for none, at 32-40 % of cv5's time."""

    refine_scale_precision: float = 1.0
    """micro-refine scales its routed prior by a fitted s ~ N(1, 1/this): a wrong prior can shrink to 0."""

    refine_keep_prior_se: float = 1.0
    """micro-refine keeps its prior alone unless the best candidate's leave-one-out loss on the budget
    pairs is lower by more than this many standard errors of the per-pair differences. 3 keeps a good
    prior better (the best of 15 candidates looks better than it is on 5-10 pairs: higher micro-refine in
    all 120 cells of the acquisition tables, demo B = 5 / 10 0.805 / 0.806 against 0.785 / 0.788) but holds
    on to a useless one (the paper's stage 1 on a 'shared' cache: 0.535 against budget-bt's 0.681 at
    B = 50): docs/results.md."""

    refine_prior_pairs: int = 256
    """micro-refine's prior head per context is the stage-1 heads mixed by micro's weights (the adapted
    router's times the context's Hedge weights, context_rate), averaged over pairs of that context: N > 0 over the first N of its training pairs in the seed's random
    order (their prompts and context only, never their labels), so a budget of 1 does not make the prior
    one pair's routing; 0 over its budget pairs (the rule before: at B = 1, 0.802 against micro's 0.838
    on a planted 8-group cache, docs/results.md)."""

    oracle_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    """Candidate precisions (same units) for the oracle head, chosen on a 20 % hold-out of ALL the
    attribute's training pairs, then refitted on all of them."""

    head_input: str = "response"
    """What the frozen heads score in stage 2 (budget losses, test margins, every baseline): 'response'
    (the (prompt, response) embeddings stage 1 trained on), 'context' (the (context + prompt, response)
    embeddings of a cache built with `micro embed --context-in-sequence`: section 5.3 prepends the
    context to the prompt for training and test, and Tables 7-8 score "augmented" test sets), or 'auto'
    (`--paper`): 'context' when the cache(s) hold them, else 'response' with a note."""

    baseline_runs: list[str] = field(default_factory=list)
    """Stage-1 baseline run directories (`--baselines DIR ...`: runs of `micro fit-mixture --method
    single|static|ensemble`). Missing ones come from the MiCRo run's record, else are fitted on its
    stage-1 data (never on another dataset's cache): micro.router.stage1_baselines."""

    baselines: bool = True
    """Score the stage-1 baselines that need their own stage-1 fits (single, static, ensemble-best,
    hyre); False skips those fits. micro, micro-refine, budget-bt, oracle, stage1-best and micro-hyre
    are always scored."""

    eval_cache: str | None = None
    """Evaluate on another cache's test split (same backbone; the Table 4 setting). None: the adapt cache."""

    save_routers: bool = True
    """Write each adapted router (and micro-refine heads) under OUT/routers/."""

    plot: bool = True
    """Draw budget_curve.png (needs matplotlib; skipped with a note when missing)."""

    device: str = "cpu"
    """'cpu' or 'cuda'."""

    cross_dataset: bool = False
    """The adapt cache holds other data than the run's stage-1 cache (the paper's cross-dataset setting,
    Table 4). Without it, a cache built from another table than the run was fitted on is refused (it is
    most often a cache rebuilt in place by mistake)."""

    mask_heads: list[int] = field(default_factory=list)
    """Stage-1 heads given zero weight (paper section 8: heads a safety audit flagged). The router adapts
    with the mask in place (masked heads get no Hedge label mass) and every method scores without them."""

    drm_components: int = 8
    """drm (micro.router.peers): principal directions of the training difference embeddings kept as
    heads; each is used with both signs (2 x this heads), as in the DRM code."""

    drm_temperature: float = 1.0
    """drm: a user's head weights are softmax(-summed BT loss / this) on the user's budget pairs (DRM: 1)."""

    lore_rank: int = 4
    """lore (micro.router.peers): rank r of the shared basis V [d, r] learned from the training groups."""

    lore_steps: int = 300
    """lore: full-batch Adam steps of the joint basis fit, and again of each new user's weights."""

    lore_lr: float = 0.05
    """lore: Adam learning rate of both fits (differences are scaled to unit rms norm)."""

    acquire: str = "random"
    """Which train pairs of each attribute to ask for (micro.router.acquire): 'random' (the seeded
    draw), 'uncertainty' (smallest |routed margin| of the re-adapted router), 'disagreement' (largest
    weighted disagreement among the heads' signs) or 'bald' (largest mutual information between the
    pair's label and which head is right, under the re-adapted router's weights). Active rules ask in
    rounds of acquire_batch; one sequence per seed up to the largest budget, so budgets are nested."""

    acquire_batch: int = 5
    """Pairs per attribute asked per round by an active rule (the first round is the seeded random draw)."""

    acquire_random: float = 0.5
    """Share of each active round's acquire_batch pairs taken next in the seeded random order (floored:
    2 of 5) instead of by the rule: insurance against a rule that keeps asking for one kind of pair
    (docs/results.md: it narrows the spread of
    rule - random; 0 asks by the rule alone)."""

    def __post_init__(self) -> None:
        if isinstance(self.budgets, (str, bytes)) or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in self.budgets):
            raise ValueError(f"budgets must be a list of positive integers, not {self.budgets!r}")
        check_numbers(self, integers=("seeds", "seed", "epochs", "router_min_steps", "batch_size", "hyre_shots", "drm_components",
                                       "lore_rank", "lore_steps", "acquire_batch", "refine_prior_pairs"),
                      reals=("tau", "context_rate", "lr", "weight_decay", "refine_scale_precision", "refine_keep_prior_se", "drm_temperature", "lore_lr",
                             "acquire_random"))
        for name in ("seed", "weight_decay", "router_min_steps", "context_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if isinstance(self.mask_heads, (str, bytes)) or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 0 for h in self.mask_heads):
            raise ValueError(f"mask_heads must be a list of head indices (integers >= 0), not {self.mask_heads!r}")
        self.mask_heads = sorted({int(h) for h in self.mask_heads})
        self.budgets = [int(b) for b in self.budgets]
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive integers, not {self.budgets!r}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct, not {self.budgets!r}")
        self.budgets = sorted(self.budgets)
        if self.refine_keep_prior_se < 0:
            raise ValueError(f"refine_keep_prior_se must be >= 0, not {self.refine_keep_prior_se!r}")
        if self.refine_prior_pairs < 0:
            raise ValueError(f"refine_prior_pairs must be >= 0 (0: the budget pairs), not {self.refine_prior_pairs!r}")
        if self.refine_select not in REFINE_SELECT:
            raise ValueError(f"refine_select must be one of {', '.join(REFINE_SELECT)}, not {self.refine_select!r}")
        if self.acquire not in ACQUIRE_RULES:
            raise ValueError(f"acquire must be one of {', '.join(ACQUIRE_RULES)}, not {self.acquire!r}")
        if not 0.0 <= self.acquire_random <= 1.0:
            raise ValueError(f"acquire_random must be in [0, 1], not {self.acquire_random!r}")
        for name in ("drm_temperature", "lore_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in ("seeds", "epochs", "batch_size", "drm_components", "lore_rank", "lore_steps", "acquire_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.hyre_shots < 0:
            raise ValueError(f"hyre_shots must be >= 0, not {self.hyre_shots!r}")
        if not self.tau >= 0:
            raise ValueError(f"tau must be >= 0, not {self.tau!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, not {self.lr!r}")
        if self.head_input not in ("response", "context", "auto"):
            raise ValueError(f"head_input must be 'response', 'context' or 'auto', not {self.head_input!r}")
        self.baseline_runs = [str(p) for p in self.baseline_runs]
        if self.hyre_variant not in HYRE_VARIANTS:
            raise ValueError(f"hyre_variant must be one of {HYRE_VARIANTS}, not {self.hyre_variant!r}")
        self.refine_grid = tuple(float(c) for c in self.refine_grid)
        self.oracle_grid = tuple(float(c) for c in self.oracle_grid)

    @classmethod
    def paper(cls, **overrides: Any) -> "AdaptConfig":
        """The paper's stage 2 (appendix B.1, section 5.3): tau = 1e-3 (the per-dataset value is
        `micro.paper.PRESETS`: 1e-4 on RPR), heads scoring context-augmented sequences when cached."""
        return cls(**{"tau": 1e-3, "head_input": "auto", "router_min_steps": 0, "context_rate": 0.0, **overrides})

    @property
    def seed_values(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

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
