"""`MixtureConfig`: every stage-1 default in one place; `SimulateConfig`: every default of `micro simulate`.
CLI flags override fields; nothing else has defaults."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

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


@dataclass
class MixtureConfig:
    """How to fit stage 1 (paper section 4.1, appendix B.1) or one of its baselines on a cache."""

    method: str = "micro"
    """'micro': K heads + prompt router (eq. 3-5). 'single': one BT head (K forced to 1).
    'static': K heads with input-independent learned weights (MaxMin-style static mixture).
    'ensemble': K heads, each with a frozen random prior, trained on the uniform sum of per-head BT
    losses (the shared-base ensemble of HyRe)."""

    k: int = 10
    """Number of heads K (the paper uses 10 on RPR/HelpSteer2; 'single' ignores it)."""

    alpha: float = 0.5
    """Weight of the router regulariser (eq. 5). 0 switches it off."""

    alpha_alternatives: tuple[float, ...] = (0.0,)
    """Other router regulariser weights an early-stopping `micro` fit may keep instead of `alpha`: one is
    kept when its held-out values of the restart criterion (the calibrated NLL by default, per pair) are
    lower by at least `scale_choice_z` standard errors of the per-pair difference. On cross-validated
    caches (`folds`) the search runs once per weight and the folds' pooled values choose; on one held-out
    slice the weights' starts train side by side (`alpha_restarts`). The batch balance keeps all K heads
    in use, so with fewer groups than heads it spreads each group over several heads, each fitted on a
    share of the group's pairs (600-pair planted caches: micro@50 3.7 points below the fit without it;
    23.5K x 3072 'shared': micro-refine@50 1.1 points from the oracle). Without it a router can also settle
    on a few heads for groups that differ less (the demo: two heads for eight groups, micro@50 -7.9), and
    the held-out values tell the two apart (benchmarks/README.md, "The regulariser's weight chosen by the
    folds" and "... on one held-out slice"). (): `alpha` only, as `--paper` has it."""

    alpha_restarts: int = 1
    """Early stopping on one held-out slice, `micro`, with `alpha_alternatives`: starts per head scale
    trained with each alternative weight beside the `restarts` starts of `alpha` (initialised as the first
    ones of `alpha`). At the restart choice the best start of each weight is chosen as usual; an
    alternative's goes on, beside alpha's in the same stack, when it leads alpha's there by
    `scale_choice_z` standard errors of the per-pair difference, and at the end of the search the two
    starts' kept weights are compared again by that bar; the refit trains the one kept, with its weight. The lead at the restart choice alone is not enough: on a real
    8-group cache alpha 0 led there and its router later settled on a few heads."""

    router: str = "mlp"
    """'mlp': one hidden layer + softmax (the paper); 'linear': as the authors' released code."""

    hidden: int = 128
    """Width of the MLP router's hidden layer (paper: 128)."""

    epochs: int | None = None
    """None (default): train until the held-out NLL stops improving (the fields below, from `holdout` to
    `restarts`). An int: exactly that many passes over the training pairs with warm-up + cosine decay and
    no held-out slice (the earlier fixed schedule; 4 epochs of a 9K-pair cache are ~1,150 steps, far from
    converged, while 40 epochs overfit a small one: no fixed count suits both a 600- and a 700K-pair
    cache)."""

    stop_on: str = "later-plateau"
    """Early stopping: the held-out value(s) watched. 'later-plateau' (default): two values from one pass,
    the mixture NLL and the calibrated NLL below; the learning rate drops, and the fit stops, only when
    neither has improved for `patience` evaluations, and the best weights of the one whose best step is
    later are kept (ties: 'nll'); restarts are chosen by the calibrated NLL. The fit record's
    `kept_criterion` says whose weights were kept. 'nll': the mixture NLL alone (the default before; it
    stops too early on sample-limited high-dimensional caches, e.g. d = 3072 at 6K pairs, where the NLL
    turns up while the ranking still improves). 'calibrated-nll': the mixture NLL after the one
    temperature T (every head margin divided by T, T from a log grid, chosen on the held-out slice) that
    fits it best, so over-confident margins that still rank well are not counted as worse (stops early
    and loses ~0.01 stage-1 accuracy at d = 64). The calibrated values are for 'micro' and 'static' only
    ('single' and 'ensemble' keep their per-head BT loss). Measured in benchmarks/README.md, "Stopping at
    the later plateau, the default"."""

    holdout: float = 0.1
    """Early stopping: fraction of the training pairs held out, as whole prompts (a prompt's pairs are never
    split), to measure the held-out mixture NLL on. The test split is never touched."""

    holdout_max_pairs: int = 8192
    """Early stopping: at most this many held-out pairs (a 700K-pair cache holds out ~8K, not 70K: the
    NLL of 8K pairs is precise to ~0.005 nats and each evaluation stays cheap)."""

    eval_every: int = 0
    """Early stopping: steps between held-out evaluations. 0 (default): a quarter epoch, clipped to
    [50, 500] steps (50 on a 600-pair cache, 183 at 23.5K pairs, 500 at 700K)."""

    patience: int = 5
    """Early stopping: evaluations without an improvement (of more than `min_delta`) before the learning
    rate drops, or, after `lr_drops` drops, before the fit stops."""

    min_delta: float = 1e-4
    """Early stopping: relative decrease of the held-out NLL that counts as an improvement."""

    lr_drops: int = 0
    """Early stopping: plateaus on which the learning rate is multiplied by `lr_drop_factor` before the
    next plateau stops the fit (a lower rate settles the noisy AdamW iterate near the optimum; 0 by
    default, as the refit's cosine decay does that settling)."""

    lr_drop_factor: float = 0.2
    """Early stopping: learning-rate multiplier at each drop."""

    min_steps: int = 1000
    """Early stopping: never stop before max(min_steps, min_epochs epochs) steps (the best weights are still
    kept, so an early optimum is not lost)."""

    min_epochs: float = 0.25
    """Early stopping: see min_steps (a quarter pass: 5.5K steps on a 700K-pair cache)."""

    max_steps: int = 20000
    """Early stopping: stop after max(max_steps, max_epochs epochs) steps at the latest (20K steps on
    caches up to 160K pairs, 87.5K on a 700K-pair cache)."""

    max_epochs: float = 4.0
    """Early stopping: see max_steps."""

    restarts: int = 4
    """Early stopping, `micro` only: initialisations (seeds seed, seed + 7919, ...) trained side by side as
    one stacked model for `restart_steps`; the one with the lowest held-out NLL goes on alone.
    Mixture fits have local optima (a head that serves no group, a group split over two heads); a restart
    that falls in one shows it in the held-out NLL. 1: a single initialisation."""

    lr: float = 2e-3
    """Peak AdamW learning rate (paper B.1)."""

    batch_size: int | None = None
    """Pairs per optimiser step; None (default): 32 (the paper's 4 x 8 gradient-accumulation steps) with
    fixed `epochs` and on caches up to ~7K training pairs, and with early stopping on larger caches the
    power of two nearest n / 150 for n training pairs, at most 512 (`auto_batch_size`: 128 at 18.8K), so
    that a step averages out more of the noise of weak-signal pairs in high dimensions and a big cache
    needs fewer steps (benchmarks/README.md, "A batch that grows with the cache"). The step counts of
    early stopping (min_steps, max_steps, eval_every, restart_steps) are counted in steps of 32 pairs and
    shrink in proportion for a larger batch."""

    warmup: float = 0.05
    """Fraction of all steps spent in linear warm-up (paper B.1); then cosine decay to 0."""

    head_init: tuple[float, ...] = (1.0, 0.01)
    """Scales of the heads' initial weights (uniform in +-s / sqrt(d)). An early-stopping `micro` fit trains
    `restarts` starts with each scale side by side (seeds seed, seed + 7919, ... in this order) and keeps
    the one the held-out slice prefers (see `scale_choice_z`); other fits use the first scale. 1 is the
    usual layer initialisation; 0.01 starts the heads near zero, as a logistic regression starts: early
    stopping keeps whatever part of the initialisation no gradient removes, and in high dimensions that
    part is noise in every head's direction. The default (1, 0.01) lets the held-out slice choose: better
    on planted caches (23.5K x 3072: stage1-best +1.4 points), the same on the demo and the HelpSteer2
    subset (benchmarks/README.md, "Both head scales, the default"). `--paper` keeps (1,)."""

    scale_choice_z: float = 1.0
    """With several `head_init` scales: a start of a later scale is kept instead of the best start of the
    first scale only when its held-out NLL (the restart criterion) is lower by at least this many standard
    errors of the per-pair difference on the held-out slice; 0: the lowest NLL wins. On 6K x 3072 planted
    caches the lowest NLL chose a start near zero that was worse in 2 of 10 fits, 0.26 and 0.57 standard
    errors ahead; the good choices at 23.5K x 3072 were 1.05 to 2.55 ahead (benchmarks/README.md, "Both
    head scales, the default")."""

    weight_decay: float = 0.0
    """Decoupled AdamW weight decay on heads and router. 0 (the paper's probes are unregularised), which
    also makes 'single' plain maximum-likelihood logistic regression on the difference vectors."""

    seed: int = 0
    """Seeds head/router initialisation, the ensemble priors and the batch order: same seed, same model."""

    device: str = "cpu"
    """'cpu' or 'cuda'. The cached tensors are moved there once and trained in place."""

    threads: int = 1
    """CPU threads torch may use while fitting (restored afterwards). Batch-32 steps are too small to gain
    from more; on a shared CPU extra threads mostly wait on each other (measured: 2 threads ran 2-8x slower
    than 1 on the 2-core benchmark machine under load). 0 leaves torch's own setting."""

    router_input: str = "auto"
    """What the router sees: 'prompt' (the paper's stage 1), 'context' (context + prompt embedding), or
    'auto' (default): 'context' when every training pair carries a context, else 'prompt'. When groups
    share prompts, only a router that sees the context can tell them apart (docs/design.md,
    "Identifiability"); benchmarks/README.md, "Beyond the paper", has the evidence."""

    balance: str = "batch"
    """Regulariser form. 'batch' (default): alpha * sum_k fbar_k log fbar_k with fbar the batch-mean
    weights (keeps every head in use without flattening each example's weights). 'example': eq. 4 as
    written, alpha * mean_i sum_k f_k(x_i) log f_k(x_i); at alpha 0.5 it pins the router to uniform
    weights on every cache measured (see benchmarks/README.md)."""

    prior_scale: float = 1.0
    """Ensemble only: size of each head's frozen random prior, in units of the margins of a single BT head
    fitted first on the same data (so the priors neither drown a weak signal nor vanish beside a strong one)."""

    prior_l2: float = 0.05
    """Ensemble only: L2 penalty (lambda/2) * rms(diff)^2 * ||theta_k||^2 on each head's trainable part,
    inside the loss as in randomized prior functions (rms(diff)^2 ||theta||^2 is the variance of theta's
    margins, so the setting is cache-independent). It keeps every head near its own prior, hence
    diverse; 0 collapses all heads onto the single-head solution (BT on frozen features is convex).
    0.05 gave pairwise agreement ~0.86 with best-head accuracy equal to the single head's on the
    simulated cache."""

    prior_calibration: str = "single-head"
    """Ensemble only: the unit of the frozen priors. 'single-head' (default): margins of a single BT head
    fitted first on the same data. 'none' (the paper's shared-base ensemble, `--paper`): a fixed random
    prior network whose margins have unit standard deviation."""

    refit: bool = True
    """Early stopping: after the search, train the chosen initialisation again on every training pair
    (held-out slice included) for the best step count scaled by the pair counts, with warm-up + cosine
    decay. The search's constant rate leaves noisy weights and a small cache misses its held-out 10 %;
    the refit fixes both (on 600-pair planted caches the kept weights of the search reached 0.80
    best-head accuracy, 40 cosine epochs 0.83). Only for caches up to `refit_max_pairs`."""

    refit_warm: float = 0.0
    """Early stopping with `refit`: 0 (default) trains the chosen initialisation again from scratch; f > 0
    continues the kept weights of the search on every pair instead, for f x the scaled best step count,
    with warm-up + cosine decay (a shorter second pass: benchmarks/README.md, "A warm refit")."""

    refit_length: float = 1.0
    """Early stopping with `refit`: the refit's length in units of the search's best step count (scaled by
    the pair counts); 1 (default) trains as long as the held-out slice asked for. 3 gives better heads on
    3,072-dimensional caches of a few thousand pairs (6K x 3072 planted: micro-refine 0.9-1.0 points from the oracle instead of 1.1-1.3) but over-trains
    at d = 64 and on the HelpSteer2 subset, at 1.2-2.2x the CPU (benchmarks/README.md, "A longer refit")."""

    refit_se: float = 1.0
    """Early stopping with `refit` on one held-out slice: the refit's length comes from the last evaluation of
    the search whose held-out values (the kept criterion, per pair) are within this many standard errors of
    the per-pair difference of its best step's; 0: the best step itself (the rule before). On a flat
    held-out plateau (6K x 3072 planted: micro-refine +0.6 / +0.8 points) that is later than the best, on a
    clear minimum (d = 64 at 6K pairs) close to it. Caches cross-validated by `folds` keep the folds' mean
    best step: their slices are small and the rule lengthened the refit too far (600 pairs: micro@50 -0.9 /
    -1.7). benchmarks/README.md, "A refit as long as the plateau"."""

    refit_max_pairs: int = 100_000
    """Early stopping: refit only caches with at most this many training pairs (above it the held-out
    slice is a small share of the pairs and a second pass costs minutes)."""

    folds: int = 5
    """Early stopping, `micro`, small caches: when the held-out slice would hold fewer than `folds_below`
    pairs, the start and the refit's length are chosen by `folds`-fold cross-validation over prompts
    instead of on one slice (heads/fit.py): every training pair is held out once, so the choice among
    starts rests on all of them, not on a slice of a few dozen. On 600-pair planted caches (a 48-pair
    slice) the folds kept a start near zero in 10 of 10 fits, one slice in 2 of 10, and stage1-best rose by
    2.8-4.5 points; on the demo and the HelpSteer2 subset the results moved by less than 0.005
    (benchmarks/README.md, "Cross-validation on small caches"). Costs about `folds` + 1 fits (seconds on
    such caches). 1: one slice always."""

    folds_below: int = 400
    """Early stopping: cross-validate (`folds`) when the held-out slice would hold fewer pairs than this
    (with `holdout` 0.1: caches of fewer than ~4,000 training pairs)."""

    restart_steps: int = 500
    """Early stopping with restarts: steps (rounded up to an evaluation) before the best restart is kept.
    The stacked restarts cost ~R times a step, so this stays short; a restart that fell into a poor
    optimum is already behind by then (benchmarks/README.md, "Convergence")."""

    def __post_init__(self) -> None:
        check_numbers(self, integers=("k", "hidden", "seed", "threads", "holdout_max_pairs", "eval_every",
                                      "patience", "lr_drops", "min_steps", "max_steps", "restarts", "refit_max_pairs",
                                      "restart_steps", "folds", "folds_below", "alpha_restarts") + tuple(f for f in ("epochs", "batch_size") if getattr(self, f) is not None),
                      reals=("alpha", "lr", "warmup", "weight_decay", "prior_scale", "prior_l2", "holdout", "min_delta",
                             "lr_drop_factor", "min_epochs", "max_epochs", "refit_warm", "scale_choice_z", "refit_length", "refit_se"))
        for name in ("alpha", "weight_decay", "prior_scale", "prior_l2", "seed", "threads", "scale_choice_z", "alpha_restarts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        scales = (self.head_init,) if isinstance(self.head_init, numbers.Real) else tuple(self.head_init)
        if not scales or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in scales):
            raise ValueError(f"head_init must be one or more positive numbers, not {self.head_init!r}")
        self.head_init = tuple(float(v) for v in scales)
        alphas = (self.alpha_alternatives,) if isinstance(self.alpha_alternatives, numbers.Real) else tuple(self.alpha_alternatives)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in alphas):
            raise ValueError(f"alpha_alternatives must be numbers >= 0 (or none), not {self.alpha_alternatives!r}")
        self.alpha_alternatives = tuple(float(v) for v in alphas)
        if self.method not in FIT_METHODS:
            raise ValueError(f"method must be one of {', '.join(FIT_METHODS)}, not {self.method!r}")
        if self.router not in ("mlp", "linear"):
            raise ValueError(f"router must be 'mlp' or 'linear', not {self.router!r}")
        if self.router_input not in ("auto", "prompt", "context"):
            raise ValueError(f"router_input must be 'auto', 'prompt' or 'context', not {self.router_input!r}")
        if self.prior_calibration not in ("single-head", "none"):
            raise ValueError(f"prior_calibration must be 'single-head' or 'none', not {self.prior_calibration!r}")
        if self.stop_on not in ("nll", "calibrated-nll", "later-plateau"):
            raise ValueError(f"stop_on must be 'nll', 'calibrated-nll' or 'later-plateau', not {self.stop_on!r}")
        if self.balance not in ("example", "batch"):
            raise ValueError(f"balance must be 'example' or 'batch', not {self.balance!r}")
        if self.folds_below < 0:
            raise ValueError(f"folds_below must be >= 0, not {self.folds_below!r}")
        for name in ("k", "hidden", "patience", "restarts", "holdout_max_pairs", "folds") + (("batch_size",) if self.batch_size is not None else ()):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.epochs is not None and int(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1 (or None: early stopping), not {self.epochs!r}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout is a fraction of the training pairs in (0, 1), not {self.holdout!r}")
        if not 0 < self.lr_drop_factor < 1:
            raise ValueError(f"lr_drop_factor must be in (0, 1), not {self.lr_drop_factor!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), not {self.warmup!r}")
        if not self.refit_se >= 0:
            raise ValueError(f"refit_se must be >= 0, not {self.refit_se!r}")
        if not self.refit_length > 0:
            raise ValueError(f"refit_length must be > 0, not {self.refit_length!r}")
        if not 0 <= self.refit_warm <= 1:
            raise ValueError(f"refit_warm is a fraction of the refit's steps in [0, 1], not {self.refit_warm!r}")
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
        """The paper's exact stage 1 (section 4.1, B.1): the router reads the prompt only, the
        regulariser is eq. 4's per-example entropy, and the ensemble is a frozen random prior network plus
        trainable heads on the uniform sum of BT losses (no anchor, no calibration); batch 32 and the usual
        layer initialisation of the heads (head_init 1). The per-dataset K is
        `micro.paper.PRESETS`. Other fields keep their defaults unless overridden."""
        paper = {"router_input": "prompt", "balance": "example", "prior_l2": 0.0, "prior_calibration": "none", "batch_size": BASE_BATCH,
                 "head_init": (1.0,), "alpha_alternatives": ()}
        return cls(**{**paper, **overrides})

    def resolved(self, train: "Any") -> "MixtureConfig":
        """This config with router_input 'auto' and batch_size None decided for a training split (a CacheSplit)."""
        done = self
        if self.router_input == "auto":
            done = replace(done, router_input="context" if train.all_have_context else "prompt")
        if self.batch_size is None:
            done = replace(done, batch_size=BASE_BATCH if self.epochs is not None else auto_batch_size(len(train)))
        return done

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MixtureConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
    """Fraction c of the groups' mean direction removed before normalising (at most 1; None: 1 for shared,
    0 for prompt). With u_g ∝ v_g - c mean_h v_h, c = 1 centres them: the unit directions sum to ~0 (mean
    pairwise cosine ~ -1/(G-1)), so the groups conflict and one global BT direction fits no group better
    than chance; c = 0 keeps independent random directions (nearly orthogonal in high dimension); c < 0
    adds the common direction, so most pairs are consensus pairs that every group ranks alike (3 groups,
    d = 64: c = -4 about 75 %, c = -12 about 90 %). Ignored for one group."""

    decisive: float | None = None
    """Share q of the response pairs that tell the groups apart (None: every pair, the plain Gaussian
    draw). The other pairs' differences e_a - e_b lose their component in the span of the centred group
    directions u_g - mean_h u_h, so every group gives them the same score (consensus pairs, ranked by the
    common direction: pair with conflict < 1, e.g. -4, for a common direction that ranks them surely); a
    decisive pair's component there is scaled by 1/sqrt(q), so the groups disagree on it by a large margin
    and the difference keeps its average size in that span. With 8 groups, d = 64, conflict -4: q = 0.05
    leaves about 95 % consensus pairs. Ignored for one group."""

    def __post_init__(self) -> None:
        check_numbers(self, integers=("groups", "dim", "pairs", "seed", "pairs_per_prompt"),
                      reals=("test_fraction", "scale", "sharpness", "weight_floor", "context_scale")
                      + tuple(name for name in ("conflict", "decisive") if getattr(self, name) is not None))
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
        return asdict(self)
