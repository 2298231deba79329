"""Which heads to mask: `--mask-heads 3,7` or `--mask-from DIR/audit.json` (the heads `micro audit` flagged).

The mask itself lives in the model (`MixtureRewardModel.mask_heads`: masked heads' router logits go to
-inf before the softmax, so the other heads' weights renormalise); this module only reads the choice.
"""

from __future__ import annotations

import json
from pathlib import Path


def parse_heads(text: str) -> list[int]:
    """'3,7' -> [3, 7]; refuses anything but comma-separated non-negative integers."""
    try:
        heads = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--mask-heads {text!r}: give comma-separated head numbers, e.g. --mask-heads 3,7") from None
    if any(h < 0 for h in heads):
        raise ValueError(f"--mask-heads {text!r}: head numbers start at 0")
    return sorted(set(heads))


def read_audit(path: str | Path) -> list[int]:
    """The flagged heads of an audit.json written by `micro audit`."""
    path = Path(path)
    if path.is_dir():
        path = path / "audit.json"
    if not path.exists():
        raise FileNotFoundError(f"--mask-from {path}: file not found; give the audit.json written by `micro audit`")
    try:
        data = json.loads(path.read_text())
        return sorted(int(h) for h in data["flagged"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--mask-from {path}: not an audit.json written by `micro audit` (no list 'flagged')") from None


def resolve_mask(mask_heads: str | None = None, mask_from=None) -> list[int]:
    """The union of --mask-heads and the flagged heads of --mask-from (one audit.json or a list of them,
    e.g. one per safety benchmark); None for either means none. [] masks nothing."""
    heads = set(parse_heads(mask_heads)) if mask_heads else set()
    for path in [mask_from] if isinstance(mask_from, (str, Path)) else (mask_from or []):
        heads |= set(read_audit(path))
    return sorted(heads)
