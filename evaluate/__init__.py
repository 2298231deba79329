"""Evaluate a run the way the field does: `micro eval` (every head, the routed mixture, the single
baseline, an adapted router; RewardBench section scores) and `micro audit` (paper section 8: flag heads
that prefer unsafe responses, to mask them).

    from micro.evaluate import EvalConfig, run_eval, AuditConfig, run_audit, resolve_mask
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "flag_heads": ".audit",
    "paired_difference_bounds": ".audit",
    "run_audit": ".audit",
    "wilson": ".audit",
    "AuditConfig": ".config",
    "EvalConfig": ".config",
    "read_audit": ".masks",
    "resolve_mask": ".masks",
    "EXAMPLE_COUNTS": ".rewardbench",
    "SUBSET_MAPPING": ".rewardbench",
    "rewardbench_scores": ".rewardbench",
    "section_scores": ".rewardbench",
    "accuracy_table": ".run",
    "run_eval": ".run",
    "score_pairs": ".run",
    "load_pairs": ".source",
    "prepare_cache": ".source",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
