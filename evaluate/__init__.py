"""Evaluate a run the way the field does: `micro eval` (every head, the routed mixture, the single
baseline, an adapted router; RewardBench section scores) and `micro audit` (paper section 8: flag heads
that prefer unsafe responses, to mask them).

    from micro.evaluate import EvalConfig, run_eval, AuditConfig, run_audit, resolve_mask
"""

from .audit import flag_heads, paired_difference_bounds, run_audit, wilson
from .config import AuditConfig, EvalConfig
from .masks import read_audit, resolve_mask
from .rewardbench import EXAMPLE_COUNTS, SUBSET_MAPPING, rewardbench_scores, section_scores
from .run import accuracy_table, run_eval, score_pairs
from .source import load_pairs, prepare_cache

__all__ = [
    "AuditConfig",
    "EXAMPLE_COUNTS",
    "EvalConfig",
    "SUBSET_MAPPING",
    "accuracy_table",
    "flag_heads",
    "load_pairs",
    "paired_difference_bounds",
    "prepare_cache",
    "read_audit",
    "resolve_mask",
    "rewardbench_scores",
    "run_audit",
    "run_eval",
    "score_pairs",
    "section_scores",
    "wilson",
]
