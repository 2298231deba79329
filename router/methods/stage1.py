"""The stage-1 baselines (paper Table 2): `single`, `static` and `ensemble-best`, each from its own stage-1
fit (micro.router.stage1_baselines: given runs, runs recorded in the MiCRo run, or fitted once)."""

from __future__ import annotations

import torch

from ..plugin import Budget, Plugin, Sweep
from ..stage1_baselines import load_baselines


def baselines(sweep: Sweep) -> dict:
    """{'single', 'static', 'ensemble': model}, loaded or fitted once per sweep."""
    return sweep.once("baselines", lambda: load_baselines(sweep.run_dir, sweep.run_config, sweep.config.baseline_runs,
                                                          sweep.cache, sweep.out, sweep.log))


class _Routed(Plugin):
    """A baseline scored by its own (prompt-routed or uniform) margin on every test pair."""

    fit = ""

    def prepare(self, sweep: Sweep) -> None:
        with torch.no_grad():
            self.margins = baselines(sweep)[self.fit].routed_margin(sweep.test.diff, sweep.test.prompt_inputs())

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return {s: self.margins for s in sweep.seeds}


class Single(_Routed):
    fit = "single"


class Static(_Routed):
    fit = "static"


class EnsembleBest(Plugin):
    """The shared-base ensemble's best head per user, chosen on the test pairs (an upper line of its kind)."""

    def prepare(self, sweep: Sweep) -> None:
        with torch.no_grad():
            margins = baselines(sweep)["ensemble"].head_margins(sweep.test.diff)
        self.values = {a: float((margins[rows] > 0).float().mean(0).max()) for a, rows in sweep.scores.rows.items()}

    def score(self, sweep: Sweep, budget: Budget) -> dict:
        return {s: self.values for s in sweep.seeds}
