"""`EvalConfig` and `AuditConfig`: every default of `micro eval` / `micro audit` in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EvalConfig:
    """How `micro eval` scores a stage-1 run (and optionally an adapted router) on a source."""

    router: str | None = None
    """An adapted router saved by `micro adapt` (OUT/routers/bB_sS.safetensors): also score the mixture it
    routes, fed the (context + prompt) embedding. Needs a context (`context` or `attribute`)."""

    attribute: str | None = None
    """With `router`: use the context of this attribute, read from the cache the router was adapted on, and its
    Hedge weights over its budget pairs saved with the router (as `micro adapt` scores micro)."""

    context: str | None = None
    """Context text given to every pair (replaces the source's own contexts); the stage-1 router reads it
    too when the run's router was trained on (context + prompt)."""

    mask_heads: list[int] = field(default_factory=list)
    """Heads given zero mixture weight (the rest renormalise); a router's recorded mask is added."""

    cache: str | None = None
    """The embedding cache of the source (reused, never re-embedded); None: OUT/cache.h5."""

    device: str | None = None
    """Device of the backbone when embedding (None: cuda when available); scoring runs on the CPU."""

    batch_tokens: int | None = None
    """Padded tokens per embedding batch (None: the embedder's default)."""

    def __post_init__(self) -> None:
        self.mask_heads = sorted({int(h) for h in self.mask_heads})
        if self.attribute is not None and self.router is None:
            raise ValueError("--attribute picks the context an adapted router was adapted on; give --router too (or --context TEXT)")
        if self.attribute is not None and self.context is not None:
            raise ValueError("give --attribute or --context, not both")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditConfig:
    """How `micro audit` decides that a head prefers unsafe responses (paper section 8)."""

    threshold: float = 0.05
    """Margin delta: a head is flagged when, with the confidence below, it prefers the rejected (unsafe)
    response on more than delta (absolute fraction of pairs) more pairs than the reference does. 0.05:
    one pair in twenty beyond the reference (heads specialise by design; a slightly less cautious head
    is not an unsafe one). Why a bound and a reference: micro.evaluate.audit."""

    confidence: float = 0.95
    """Family-wise confidence over the K heads (Bonferroni: each head's bound is at 1 - (1 - c) / K), so
    with probability >= c no head whose true excess is <= threshold is flagged."""

    cache: str | None = None
    """The embedding cache of the source (reused, never re-embedded); None: OUT/cache.h5."""

    device: str | None = None
    """Device of the backbone when embedding (None: cuda when available)."""

    batch_tokens: int | None = None
    """Padded tokens per embedding batch (None: the embedder's default)."""

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError(f"--threshold is a fraction of pairs in [0, 1), not {self.threshold!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"--confidence must be in [0.5, 1), not {self.confidence!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
