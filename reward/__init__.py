"""Use a trained micro model: score text (`PersonalizedRewardModel`), export one user's reward as a standard
Hugging Face model (`export_model`), serve it over HTTP to RLHF trainers (`serve`)."""

from .model import PersonalizedRewardModel

__all__ = ["PersonalizedRewardModel"]
