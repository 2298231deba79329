"""micro: personalized reward modeling (MiCRo) on a one-pass embedding cache."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from micro import PersonalizedRewardModel` without importing torch/transformers on `import micro`
    if name == "PersonalizedRewardModel":
        from .reward import PersonalizedRewardModel

        return PersonalizedRewardModel
    raise AttributeError(f"module 'micro' has no attribute {name!r}")
