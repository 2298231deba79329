"""`ScoreConfig`, `ExportConfig`, `ServeConfig`: every default of `micro score` / `export` / `serve` in one place.

They share `ModelConfig`, the fields that pick the trained model and the user it scores for; each adds its
own. The commands build their options from these fields (one docstring each: the option's help).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

#: Addresses only this machine can reach (serving on them needs no token).
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ModelConfig:
    """Which model of a `micro fit-mixture` run scores, for which user, on which device."""

    router: str | None = None
    """Adapted router from `micro adapt` (e.g. OUT/routers/b50_s0.safetensors); None: the run's stage-1 router."""

    attribute: str | None = None
    """Score as this attribute's user with its micro-refine head (needs `router`)."""

    refine: bool = True
    """With `attribute`: its micro-refine head (True), or micro as `micro adapt` scores it (--no-refine): the
    router's weights on each row's (context + prompt) times the attribute's Hedge weights over its budget pairs."""

    mask_heads: list[int] = field(default_factory=list)
    """Stage-1 heads given zero weight, e.g. 3,7 (the others renormalise); `--mask-from` adds an audit's flagged heads."""

    device: str | None = None
    """Device of the backbone: cuda, cpu ... (None: cuda when available)."""

    backbone: str | None = None
    """Load the backbone from this path instead of the one the run's cache names (a local copy)."""

    def __post_init__(self) -> None:
        self.mask_heads = sorted({int(h) for h in self.mask_heads})
        if any(h < 0 for h in self.mask_heads):
            raise ValueError(f"mask_heads {self.mask_heads}: head numbers start at 0")

    def load_model(self, run_dir: str, *, head: int | None = None, batch_tokens: int | None = None):
        """The `PersonalizedRewardModel` of run `run_dir` these fields describe."""
        from .model import PersonalizedRewardModel

        return PersonalizedRewardModel.from_run(run_dir, router=self.router, attribute=self.attribute, refine=self.refine,
                                                heads_mask=self.mask_heads or None, device=self.device, head=head,
                                                backbone=self.backbone, batch_tokens=batch_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreConfig(ModelConfig):
    """How `micro score` scores pairs or prompt + response rows."""

    context: str | None = None
    """Score every row for this user context (replaces the rows' own)."""

    batch_tokens: int | None = None
    """Padded tokens per batch, as `micro embed` (None: the embedder's default)."""

    def load_model(self, run_dir: str, **kwargs: Any):
        return super().load_model(run_dir, batch_tokens=self.batch_tokens, **kwargs)


@dataclass
class ExportConfig(ModelConfig):
    """How `micro export` writes one fixed user's reward as a standalone model."""

    head: int | None = None
    """Export stage-1 head N alone."""

    method: str | None = None
    """`single`: the run is a `micro fit-mixture --method single` run (its one head)."""

    format: str = "hf"
    """hf: a standard Hugging Face / sentence-transformers model for one fixed user; micro: the routed model in
    micro's own format (PersonalizedRewardModel.from_pretrained)."""

    check: bool = True
    """Reload the export and compare its rewards with micro's on probe rows (format hf)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in ("hf", "micro"):
            raise ValueError(f"format must be hf or micro, not {self.format!r}")
        if self.format == "hf" and self.attribute is not None and not self.refine:
            raise ValueError("--no-refine routes on each prompt's context, which no single head reproduces: export the "
                             "attribute's micro-refine head (drop --no-refine) or the routed model with --format micro")
        if self.method is not None and self.method != "single":
            raise ValueError(f"--method {self.method!r}: only `single` names a fixed user; use --head N or --router R --attribute A")

    def load_model(self, run_dir: str, **kwargs: Any):
        return super().load_model(run_dir, head=self.head, **kwargs)


@dataclass
class ServeConfig(ModelConfig):
    """How `micro serve` answers reward requests over HTTP."""

    context: str | None = None
    """User context for requests that send none."""

    host: str = "127.0.0.1"
    """Address to listen on (loopback by default)."""

    port: int = 5000
    """Port (0: any free port)."""

    max_request_bytes: int = 16 * 1024 * 1024
    """Refuse larger requests (413); 16 MiB of JSON is thousands of long responses."""

    users: str | None = None
    """Keep per-user Hedge state in this database (a SQLite file, or postgresql://...): enables /feedback and 'user'."""

    keep_text: bool = False
    """With `users`: also keep the raw text of every feedback pair (off: only summed losses, pair count, context)."""

    token: str | None = None
    """Bearer token every request must send (Authorization: Bearer TOKEN); default: $MICRO_SERVE_TOKEN."""

    insecure_no_auth: bool = False
    """Allow a non-loopback `host` without a token (anyone who reaches the port can read and change users)."""

    batch_window_ms: float = 5.0
    """Milliseconds a request waits for others to share its forward pass (0: no waiting)."""

    max_batch_rows: int = 256
    """Most rows one batched forward pass takes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token is None:
            self.token = os.environ.get("MICRO_SERVE_TOKEN") or None
        if self.host not in LOOPBACK and not self.token and not self.insecure_no_auth:
            raise ValueError(f"--host {self.host} is reachable from other machines: give --token (or $MICRO_SERVE_TOKEN), "
                             "or --insecure-no-auth to serve without one")
        if self.users and self.attribute is not None and self.refine:
            raise ValueError("--users personalizes the mixture of stage-1 heads; --attribute scores with one micro-refine head: drop one")
        if self.batch_window_ms < 0 or self.max_batch_rows < 1:
            raise ValueError("batch_window_ms must be >= 0 and max_batch_rows >= 1")
        if self.attribute is not None and self.context is not None and self.refine:
            raise ValueError("--attribute and --context both pick the user; give one (or --no-refine: the context routes, the attribute adds its Hedge weights)")
