"""Token-budget batches over a plan's jobs: which jobs run together in one padded forward pass.

Jobs are sorted longest first, so neighbours are nearly equal in length (little padding) and an
out-of-memory batch shows up at once; compiled runs count rows against bucketed widths so that every
batch of a bucket pads to one shape.
"""

from __future__ import annotations

import numpy as np


def bucket_width(width: int) -> int:
    """`width` rounded up to one of 8 steps per power of two (at least 16): at most 1/8 extra padding, and
    few enough distinct widths (~8 per doubling) that a compiled model is reused rather than recompiled."""
    width = max(int(width), 1)
    step = max((1 << max(width - 1, 1).bit_length()) // 16, 16)
    return -(-width // step) * step


def make_batches(lengths: np.ndarray, batch_tokens: int, jobs: np.ndarray | None = None, *, bucketed: bool = False) -> list[np.ndarray]:
    """Greedy token-budget batches over jobs sorted longest first: padded size (rows x longest) <= budget.

    Sorting makes neighbours nearly equal in length, so padding stays small; longest first makes an
    out-of-memory batch show up at once, not at the end of a long run. `bucketed`: rows are counted
    against the bucketed width (`bucket_width`), so every batch of a bucket can be padded to one shape.
    """
    jobs = np.arange(len(lengths)) if jobs is None else np.asarray(jobs)
    if len(jobs) == 0:
        return []
    order = jobs[np.lexsort((jobs, -lengths[jobs]))]
    widths = lengths[order]
    if bucketed:  # non-increasing like the lengths; a batch never spans two buckets
        unique, inverse = np.unique(widths, return_inverse=True)
        widths = np.array([bucket_width(w) for w in unique], dtype=np.int64)[inverse]
    descending = -widths  # ascending, for searchsorted
    batches, start = [], 0
    while start < len(order):
        width = int(widths[start])
        rows = max(1, batch_tokens // max(width, 1))
        if bucketed:
            rows = min(rows, int(np.searchsorted(descending, -width, side="right")) - start)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def batch_shape(lengths: np.ndarray, batch: np.ndarray, batch_tokens: int) -> tuple[int, int]:
    """(rows, width) a bucketed batch is padded to: the same for every batch of its bucket."""
    width = bucket_width(int(lengths[batch].max()))
    return max(1, batch_tokens // width), width
