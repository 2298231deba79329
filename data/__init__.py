"""Preference data from anywhere (built-in recipes, local files, hub ids) into one validated table
with columns prompt, chosen, rejected, attribute, context, split."""

from .errors import PreferenceDataError
from .load import load_preferences
from .recipes import RECIPES, describe_recipes
from .table import COLUMNS, summarize, table_sha256

__all__ = ["COLUMNS", "RECIPES", "PreferenceDataError", "describe_recipes", "load_preferences", "summarize",
           "table_sha256"]
