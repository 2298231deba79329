"""Stage 2 (paper section 4.2): adapt the stage-1 router to user contexts with Hedge soft labels
(eq. 6, Algorithm 1), score it beside HyRe and per-attribute baselines over budgets x seeds, and score
new pairs for a user context from embeddings."""

from .api import PersonalizedRewardModel, load_adapted, load_router, save_router
from .baselines import MapHeads, fit_budget_bt, fit_map_heads, fit_oracle_head
from .config import AdaptConfig
from .hedge import StackedRouter, adapt_routers, head_losses, soft_labels
from .hyre import hyre_margins, hyre_weights
from .refine import Refinement, fit_refinement
from .report import markdown_table
from .draws import BudgetError, check_budgets, draw_budget_pairs, draw_shots
from .scores import summarise
from .sweep import run_adapt

__all__ = [
    "AdaptConfig",
    "BudgetError",
    "MapHeads",
    "PersonalizedRewardModel",
    "Refinement",
    "StackedRouter",
    "adapt_routers",
    "check_budgets",
    "draw_budget_pairs",
    "draw_shots",
    "fit_budget_bt",
    "fit_map_heads",
    "fit_oracle_head",
    "fit_refinement",
    "head_losses",
    "hyre_margins",
    "hyre_weights",
    "load_adapted",
    "load_router",
    "markdown_table",
    "run_adapt",
    "save_router",
    "soft_labels",
    "summarise",
]
