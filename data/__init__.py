"""Preference data from anywhere (built-in recipes, local files, hub ids) into one validated table
with columns prompt, chosen, rejected, attribute, context, split."""

from ..lazy import lazy_exports

# Names load on first use, so `import micro.data.columns` (what the CLI reads its defaults from) does not
# import pandas.
_EXPORTS = {
    "COLUMNS": ".table",
    "RECIPES": ".recipes",
    "PreferenceDataError": ".errors",
    "describe_recipes": ".recipes",
    "load_preferences": ".load",
    "summarize": ".table",
    "table_sha256": ".table",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
