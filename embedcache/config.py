"""`EmbedConfig`: every `micro embed` default in one place. CLI flags override fields; nothing else has defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_MODEL = "Ray2333/GRM-Llama3.2-3B-rewardmodel-ft"
#: Longest decoder sequence when neither the model nor --max-length says less.
DEFAULT_DECODER_MAX_LENGTH = 4096
#: Padded tokens per batch. GPU: fills an 80 GB card with a 3B decoder at 4K tokens. CPU: small batches pad
#: less and keep the FFN activations in cache (2048 measured fastest for MiniLM, docs/results.md).
GPU_BATCH_TOKENS = 32768
CPU_BATCH_TOKENS = 2048


@dataclass
class EmbedConfig:
    """How `embed_table` / `micro embed` turns a preference table into a cache."""

    model: str = DEFAULT_MODEL
    """Backbone: hub id or local path of a decoder reward/causal model or a sentence-transformers encoder;
    `minilm` is the packaged all-MiniLM-L6-v2."""

    max_length: int | None = None
    """Truncate sequences over this many tokens (the prompt first, from its start). None: the model's
    maximum, at most {DEFAULT_DECODER_MAX_LENGTH} for decoders."""

    batch_tokens: int | None = None
    """Padded tokens per batch (rows x longest). None: {GPU_BATCH_TOKENS} on a GPU, {CPU_BATCH_TOKENS} on a CPU."""

    dtype: str | None = None
    """Compute dtype: bf16, fp16 or fp32. None: bf16 on a GPU, fp32 on a CPU. The cache stores float16 and
    records the compute dtype as part of its identity."""

    device: str | None = None
    """cuda, cuda:1, cpu ... None: cuda when available. Under torchrun each rank takes its local GPU."""

    context_in_sequence: bool = False
    """Also embed (context + prompt, response) for pairs with a context."""

    trust_remote_code: bool = False
    """Allow model code from the hub repository."""

    compile: bool = False
    """Run the model through torch.compile. Batch widths are then rounded up to a few buckets (at most
    1/8 extra padding) so that the compiled graph is reused instead of recompiled for every width."""

    progress: bool = True
    """Show a progress bar (rank 0 only)."""

    def __post_init__(self) -> None:
        if self.max_length is not None and int(self.max_length) < 2:
            raise ValueError(f"max_length must be at least 2 tokens, not {self.max_length!r}")
        if self.batch_tokens is not None and int(self.batch_tokens) < 1:
            raise ValueError(f"batch_tokens must be at least 1, not {self.batch_tokens!r}")

    def batch_tokens_for(self, device_type: str) -> int:
        """The token budget per batch on a device of this type ('cuda', 'cpu', ...)."""
        if self.batch_tokens is not None:
            return int(self.batch_tokens)
        return GPU_BATCH_TOKENS if device_type == "cuda" else CPU_BATCH_TOKENS

    def replace(self, **changes: Any) -> "EmbedConfig":
        """A copy with some fields changed; an unknown name is refused with the list of known ones."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown embed setting(s) {unknown}; EmbedConfig has {sorted(names)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        """The field's documentation as one line (for the CLI's --help), with the default constants filled in."""
        constants = {"DEFAULT_DECODER_MAX_LENGTH": DEFAULT_DECODER_MAX_LENGTH, "GPU_BATCH_TOKENS": GPU_BATCH_TOKENS,
                     "CPU_BATCH_TOKENS": CPU_BATCH_TOKENS}
        return " ".join(_FIELD_DOCS.get(name, "").format(**constants).split())


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of EmbedConfig, read from its source (one place for each default's meaning)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(EmbedConfig)))
    except (OSError, TypeError):  # no source (frozen app): help without descriptions
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value)
    return docs


_FIELD_DOCS = _field_docs()
