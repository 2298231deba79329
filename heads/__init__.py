"""Stage 1: K linear Bradley-Terry heads + a prompt router (MiCRo), and the baselines sharing that machinery.

    from micro.heads import MixtureConfig, run_fit_mixture, fit_mixture, evaluate, load_run
"""

from ..lazy import lazy_exports

# Names load on first use, so `import micro.heads.config` (what the CLI reads its options from)
# does not import torch.
_EXPORTS = {
    "FIT_METHODS": "..methods",
    "MixtureConfig": ".config",
    "evaluate": ".metrics",
    "MixtureRewardModel": ".model",
    "Router": ".model",
    "load_model": ".model",
    "save_model": ".model",
    "check_cache_matches": ".run",
    "holdout_by_prompt": ".run",
    "load_run": ".run",
    "run_fit_mixture": ".run",
    "SimulationTruth": ".planted",
    "bayes_accuracy": ".planted",
    "bayes_loss": ".planted",
    "load_truth": ".planted",
    "match_heads": ".planted",
    "simulate": ".planted",
    "theorem_bound": ".planted",
    "fit_mixture": ".fit",
}


__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
