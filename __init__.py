"""micro: personalized reward modeling (MiCRo) on a one-pass embedding cache."""

__version__ = "0.1.0"
