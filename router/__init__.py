"""Stage 2 (paper section 4.2): adapt the stage-1 router to user contexts with Hedge soft labels
(eq. 6, Algorithm 1), score it beside HyRe and per-attribute baselines over budgets x seeds, and score
new pairs for a user context from embeddings."""

from ..lazy import lazy_exports

# Names load on first use, so `import micro.router.config` (what the CLI reads its options from)
# does not import torch.
_EXPORTS = {
    "EmbeddingRewardModel": ".api",
    "load_adapted": ".api",
    "load_router": ".api",
    "save_router": ".api",
    "MapHeads": ".baselines",
    "fit_budget_bt": ".baselines",
    "fit_map_heads": ".baselines",
    "fit_oracle_head": ".baselines",
    "AdaptConfig": ".config",
    "StackedRouter": ".hedge",
    "adapt_routers": ".hedge",
    "head_losses": ".hedge",
    "soft_labels": ".hedge",
    "hyre_margins": ".hyre",
    "hyre_weights": ".hyre",
    "Refinement": ".refine",
    "fit_refinement": ".refine",
    "markdown_table": ".report",
    "BudgetError": ".draws",
    "check_budgets": ".draws",
    "draw_budget_pairs": ".draws",
    "draw_shots": ".draws",
    "summarise": ".scores",
    "run_adapt": ".sweep",
}


__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
