"""`MixtureConfig`: every stage-1 default in one place; `SimulateConfig`: every default of `micro simulate`.
CLI flags override fields; nothing else has defaults."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from ..methods import FIT_METHODS

#: The split a stage-1 fit is evaluated on (`--eval-split`); without it in the cache, 10 % of the train prompts.
EVAL_SPLIT = "test"


def check_numbers(config: Any, *, integers: tuple[str, ...] = (), reals: tuple[str, ...] = ()) -> None:
    """Refuse fields of the wrong type (e.g. from a hand-edited config.json), naming the field."""
    for name in integers:
        value = getattr(config, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, not {value!r}")
    for name in reals:
        value = getattr(config, name)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r}")


#: the paper's batch (4 x 8 gradient-accumulation steps); early stopping's step counts are in such steps
BASE_BATCH = 32
#: early stopping's automatic batch: about this many steps per pass, between BASE_BATCH and MAX_AUTO_BATCH
AUTO_BATCH_STEPS_PER_EPOCH = 150
MAX_AUTO_BATCH = 512


def auto_batch_size(pairs: int) -> int:
    """The batch of an early-stopping fit on `pairs` training pairs: the power of two nearest
    pairs / AUTO_BATCH_STEPS_PER_EPOCH, within [BASE_BATCH, MAX_AUTO_BATCH] (32 up to ~7K pairs, 64 at
    9K, 128 at 18.8K, 512 from ~55K)."""
    target = max(1.0, pairs / AUTO_BATCH_STEPS_PER_EPOCH)
    return int(min(MAX_AUTO_BATCH, max(BASE_BATCH, 2 ** round(math.log2(target)))))


#: the width of the MLP router's hidden layer (the paper's 128)
ROUTER_HIDDEN = 128

#: options that stage 1 had and no longer has: {name: what replaced it} (docs/decisions.md has the numbers)
REMOVED_OPTIONS = {
    "alpha_restarts": "each of alpha_alternatives trains one candidate per head scale",
    "stop_on": "early stopping always watches the mixture NLL and the calibrated NLL and keeps the later best",
    "holdout": "early stopping holds out 10 % of the training prompts, at most 8,192 pairs",
    "holdout_max_pairs": "early stopping holds out at most 8,192 pairs",
    "eval_every": "an evaluation every quarter epoch, 50 to 500 steps of 32 pairs",
    "patience": "early stopping stops after 5 evaluations without improvement",
    "min_delta": "an improvement is a relative decrease of 1e-4",
    "lr_drops": "no learning-rate drops: the refit's cosine decay settles the weights",
    "lr_drop_factor": "no learning-rate drops: the refit's cosine decay settles the weights",
    "min_steps": "the step plan: at least 1,000 steps of 32 pairs or a quarter epoch",
    "min_epochs": "the step plan: at least 1,000 steps of 32 pairs or a quarter epoch",
    "max_steps": "the step plan: at most 20,000 steps of 32 pairs or 4 epochs",
    "max_epochs": "the step plan: at most 20,000 steps of 32 pairs or 4 epochs",
    "weight_decay": "no weight decay (the paper's unregularised probes)",
    "scale_choice_z": "the selector's one bar: 1 standard error of the per-pair difference",
    "restart_steps": "successive halving at 125, 250 and 500 steps of 32 pairs",
    "refit": "the refit always runs, on caches up to 100,000 training pairs",
    "refit_warm": "the refit trains the selected candidate from its initialisation",
    "refit_length": "the refit is as long as the held-out slice asked for",
    "refit_se": "the refit's length: within 1 standard error of the best on one slice, the folds' best steps otherwise",
    "refit_max_pairs": "the refit runs on caches up to 100,000 training pairs",
    "folds": "5-fold cross-validation when the held-out slice would hold fewer than 150 pairs",
    "folds_below": "5-fold cross-validation when the held-out slice would hold fewer than 150 pairs",
    "hidden": "the router's hidden layer has the paper's 128 units",
    "warmup": "5 % linear warm-up (paper B.1)",
    "prior_scale": "ensemble_prior",
    "prior_l2": "ensemble_prior",
    "prior_calibration": "ensemble_prior ('paper' for the paper's uncalibrated prior)",
}


@dataclass
class MixtureConfig:
    """How to fit stage 1 (paper section 4.1, appendix B.1) or one of its baselines on a cache."""

    removed_options: ClassVar[dict[str, str]] = REMOVED_OPTIONS

    method: str = "micro"
    """'micro': K heads + router (eq. 3-5); 'single': one BT head; 'static': K heads with learned
    input-independent weights; 'ensemble': K heads with frozen random priors (HyRe's shared-base ensemble)."""

    k: int = 10
    """Number of heads K (the paper uses 10 on RPR/HelpSteer2; 'single' ignores it)."""

    alpha: float = 0.5
    """Weight of the router regulariser (eq. 5); 0 switches it off."""

    alpha_alternatives: tuple[float, ...] = (0.0,)
    """Other regulariser weights searched as candidates (one per head scale); one is selected only when it leads
    alpha's best by one standard error on the held-out pairs. (): alpha only (--paper)."""

    head_init: tuple[float, ...] = (1.0, 0.01)
    """Scales of the heads' initial weights (uniform in +-s / sqrt(d)), each a candidate; a later scale is
    selected only when it leads the first by one standard error. --paper: (1,)."""

    restarts: int = 4
    """Seeds per (alpha, head scale) candidate of an early-stopping `micro` fit; 1: a single initialisation."""

    router: str = "mlp"
    """'mlp': one hidden layer of 128 + softmax (the paper); 'linear': as the authors' released code."""

    router_input: str = "auto"
    """What the router reads: 'prompt' (the paper), 'context' (context + prompt), or 'auto': 'context' when every
    training pair has one; with no context at all and several attributes, each user's (attribute's) own learned
    weights over the heads (docs/users.md)."""

    balance: str = "batch"
    """Regulariser form: 'batch' keeps every head in use over a batch; 'example' is eq. 4 per example (--paper)."""

    ensemble_prior: str = "calibrated"
    """Ensemble only: 'calibrated' priors as large as a single BT head's margins, each head pulled towards its
    prior; 'paper': unit-spread priors, no pull."""

    epochs: int | None = None
    """None: early stopping on held-out prompts, candidates, selection and a refit; N: exactly N passes of
    warm-up + cosine decay with the first candidate."""

    lr: float = 2e-3
    """Peak AdamW learning rate (paper B.1)."""

    batch_size: int | None = None
    """Pairs per step; None: 32 (the paper's) up to ~7K training pairs with early stopping, then the power of two
    nearest n / 150, at most 512."""

    seed: int = 0
    """Seeds every candidate's initialisation, the held-out prompts and the batch order."""

    device: str = "cpu"
    """'cpu' or 'cuda': where the cached tensors are trained."""

    threads: int = 0
    """CPU threads torch may use while fitting; 0: torch's own setting (the machine's cores)."""

    def __post_init__(self) -> None:
        check_numbers(self, integers=("k", "seed", "threads", "restarts") + tuple(f for f in ("epochs", "batch_size") if getattr(self, f) is not None),
                      reals=("alpha", "lr"))
        for name in ("alpha", "seed", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        self.head_init = _positive_tuple("head_init", self.head_init, allow_zero=False)
        self.alpha_alternatives = _positive_tuple("alpha_alternatives", self.alpha_alternatives, allow_zero=True, allow_empty=True)
        choices = {"method": FIT_METHODS, "router": ("mlp", "linear"), "router_input": ("auto", "prompt", "context"),
                   "balance": ("batch", "example"), "ensemble_prior": ("calibrated", "paper")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("k", "restarts", "epochs", "batch_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, not {self.lr!r}")

    @property
    def num_heads(self) -> int:
        return 1 if self.method == "single" else int(self.k)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON holds them (tuples as lists), so a stored config compares equal to its source."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def paper(cls, **overrides: Any) -> "MixtureConfig":
        """The paper's exact stage 1 (section 4.1, B.1): the router reads the prompt only, the regulariser is
        eq. 4's per-example entropy, the ensemble's prior is uncalibrated, batch 32, the usual layer
        initialisation of the heads and one regulariser weight. The per-dataset K is `micro.paper.PRESETS`."""
        paper = {"router_input": "prompt", "balance": "example", "ensemble_prior": "paper", "batch_size": BASE_BATCH,
                 "head_init": (1.0,), "alpha_alternatives": ()}
        return cls(**{**paper, **overrides})

    def resolved(self, train: "Any") -> "MixtureConfig":
        """This config with router_input 'auto' and batch_size None decided for a training split (a CacheSplit).
        Whether 'auto' also routes by user (`routes_by_user`) is decided before: the resolved config reads 'prompt'."""
        done = self
        if self.router_input == "auto":
            done = replace(done, router_input="context" if train.all_have_context else "prompt")
        if self.batch_size is None:
            done = replace(done, batch_size=BASE_BATCH if self.epochs is not None else auto_batch_size(len(train)))
        return done

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MixtureConfig":
        """From a stored config.json: removed options are ignored (a run fitted before they went still loads)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def routes_by_user(config: MixtureConfig, train: "Any") -> bool:
    """Whether a fit of `config` (before `resolved`) learns each user's own weights over the heads: a micro fit
    with router_input 'auto' on a split with no context at all and more than one attribute (the user ids), where
    nothing else tells apart groups that share their prompts. An explicit 'prompt' (--paper) never does."""
    if config.method != "micro" or config.router_input != "auto" or train.has_context:
        return False
    ids = train.attribute[train.attribute >= 0]
    return len(ids) > 0 and bool((ids != ids[0]).any())


def _positive_tuple(name: str, value: Any, allow_zero: bool, allow_empty: bool = False) -> tuple[float, ...]:
    """`value` (a number or several) as a tuple of floats, each > 0 (>= 0 with `allow_zero`)."""
    values = (value,) if isinstance(value, numbers.Real) else tuple(value)
    ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0) for v in values)
    if not ok or (not values and not allow_empty):
        raise ValueError(f"{name} must be {'numbers >= 0 (or none)' if allow_zero else 'one or more positive numbers'}, not {value!r}")
    return tuple(float(v) for v in values)


SIMULATION_REGIMES = ("prompt", "shared")


@dataclass
class SimulateConfig:
    """How `micro simulate` draws a cache from a planted mixture of BT models (micro.heads.planted)."""

    groups: int = 3
    """Planted annotator groups G."""

    dim: int = 64
    """Embedding dimension d."""

    pairs: int = 6000
    """Labeled pairs in all ('shared': pairs // groups distinct triples, each labeled by every group)."""

    seed: int = 0
    """Random seed: same seed and fields, same cache."""

    regime: str = "prompt"
    """prompt (the prompt hints at the group: the paper's setting) | shared (the same pairs labelled by every
    group, conflicting, independent of the prompt)."""

    test_fraction: float = 0.2
    """Fraction of the prompts held out as the test split (whole prompts with all their pairs)."""

    scale: float = 3.2
    """Reward scale, s_g = scale * u_g . (e_w - e_l); 3.2 makes the true group's BT rule ~88 % accurate (Bayes
    with context)."""

    sharpness: float = 4.0
    """Std of the router logits A x; larger = the prompt tells the group more surely ('prompt' only)."""

    weight_floor: float = 0.1
    """Mass spread uniformly over groups, so p(g|x) >= floor/G for every prompt (the diversity constant rho of
    Assumption 3.1; 'prompt' only)."""

    context_scale: float = 1.0
    """Per-coordinate std of each group's context vector (prompt embeddings have 1)."""

    pairs_per_prompt: int = 2
    """Labeled triples drawn per prompt (the number of prompts is triples / this)."""

    conflict: float | None = None
    """Fraction c of the groups' mean direction removed before normalising (u_g ∝ v_g - c mean_h v_h, c <= 1);
    1 centres them (groups conflict), 0 keeps independent directions, c < 0 adds consensus. None: 1 for
    'shared', 0 for 'prompt' (docs/design.md, "Planted caches")."""

    decisive: float | None = None
    """Share q of the response pairs that tell the groups apart; the others lose their component in the span
    of the centred group directions, so every group ranks them alike. None: every pair (docs/design.md,
    "Planted caches")."""

    spread: float = 0.0
    """Std of an extra component of each response pair's difference along the direction of every group that
    labels it, so the differences vary along the group directions, as real embeddings do, and their principal
    directions include them (docs/peers.md). 0: none, a group shows only in its labels (isotropic differences)."""

    contexts: bool = True
    """Write each pair's context (its group's text and the (context + prompt) embeddings). No: a cache without
    contexts, as `micro embed` writes from data with no context column; the attribute column (the labelling
    group) stays, the user id (with 'shared': groups that share their prompts and bring no context)."""

    #: fields added after caches were written: recorded in a cache only when set, so a cache of the defaults
    #: stays byte-identical with one written before they existed
    RECORDED_WHEN_SET: ClassVar[tuple[str, ...]] = ("spread", "contexts")

    def __post_init__(self) -> None:
        check_numbers(self, integers=("groups", "dim", "pairs", "seed", "pairs_per_prompt"),
                      reals=("test_fraction", "scale", "sharpness", "weight_floor", "context_scale", "spread")
                      + tuple(name for name in ("conflict", "decisive") if getattr(self, name) is not None))
        if not isinstance(self.contexts, bool):
            raise ValueError(f"contexts must be true or false, not {self.contexts!r}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0, not {self.spread!r}")
        if self.spread and self.decisive is not None:
            raise ValueError("spread and decisive both set the pairs' components along the group directions: give one of them")
        if self.regime not in SIMULATION_REGIMES:
            raise ValueError(f"regime must be 'prompt' or 'shared', not {self.regime!r}")
        if self.groups < 1 or self.dim < 1 or self.pairs < 2 * self.groups:
            raise ValueError("need groups >= 1, dim >= 1 and pairs >= 2 * groups")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), not {self.test_fraction!r}")
        if self.conflict is not None and not self.conflict <= 1:
            raise ValueError(f"conflict must be at most 1 (negative: consensus), not {self.conflict!r}")
        if self.decisive is not None and not 0 < self.decisive <= 1:
            raise ValueError(f"decisive must be in (0, 1] (the share of pairs that tell the groups apart), not {self.decisive!r}")
        if not 0 <= self.weight_floor <= 1:
            raise ValueError(f"weight_floor must be in [0, 1], not {self.weight_floor!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {self.seed!r}")
        for name in ("sharpness", "context_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.pairs_per_prompt < 1:
            raise ValueError(f"pairs_per_prompt must be at least 1, not {self.pairs_per_prompt!r}")

    def resolved(self) -> "SimulateConfig":
        """This config with `conflict` None decided by the regime (1 for shared, 0 for prompt)."""
        if self.conflict is not None:
            return replace(self, conflict=float(self.conflict))
        return replace(self, conflict=1.0 if self.regime == "shared" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The fields, without those of RECORDED_WHEN_SET at their default."""
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k not in self.RECORDED_WHEN_SET or v != defaults[k]}
