"""Stage 1: K linear Bradley-Terry heads + a prompt router (MiCRo), and the baselines sharing that machinery.

    from micro.heads import MixtureConfig, run_fit_mixture, fit_mixture, evaluate, load_run
"""

from ..methods import FIT_METHODS
from .config import MixtureConfig
from .metrics import evaluate
from .model import MixtureRewardModel, Router, load_model, save_model
from .run import check_cache_matches, holdout_by_prompt, load_run, run_fit_mixture
from .simulate import (
    SimulationTruth,
    bayes_accuracy,
    bayes_loss,
    load_truth,
    match_heads,
    simulate,
    theorem_bound,
)
from .train import fit_mixture

__all__ = [
    "FIT_METHODS",
    "MixtureConfig",
    "MixtureRewardModel",
    "Router",
    "SimulationTruth",
    "bayes_accuracy",
    "bayes_loss",
    "check_cache_matches",
    "evaluate",
    "fit_mixture",
    "holdout_by_prompt",
    "load_model",
    "load_run",
    "load_truth",
    "match_heads",
    "run_fit_mixture",
    "save_model",
    "simulate",
    "theorem_bound",
]
