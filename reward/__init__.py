"""Use a trained micro model: score text (`PersonalizedRewardModel`), export one user's reward as a standard
Hugging Face model (`export_model`), serve it over HTTP to RLHF trainers (`serve`); the commands' settings
are `ScoreConfig`, `ExportConfig` and `ServeConfig` (config.py).
"""

from ..lazy import lazy_exports

# Names load on first use, so `import micro.reward.config` (what the CLI reads its options from)
# does not import torch.
_EXPORTS = {
    "ExportConfig": ".config",
    "ModelConfig": ".config",
    "ScoreConfig": ".config",
    "ServeConfig": ".config",
    "PersonalizedRewardModel": ".model",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
