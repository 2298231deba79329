"""Stage 2's methods are plug-ins: a new one is one class plus one registry line, `--methods` selects
names and groups, per-method options come from `options` / `--set`, and removed options say what replaced them."""

import csv

import pytest
import torch

from micro.methods import GROUPS, Method, register, select_methods, unregister
from micro.router import AdaptConfig, run_adapt
from micro.router.plugin import Plugin


class Prior(Plugin):
    """A toy method: the stage-1 routing of each test prompt, no budget (scores what micro starts from)."""

    def score(self, sweep, budget):
        with torch.no_grad():
            weights = torch.softmax(sweep.model.router(sweep.test.prompt_inputs()), -1)
        return {s: (weights * sweep.test_margins).sum(-1) for s in sweep.seeds}


def test_a_registered_method_is_scored_and_written(tmp_path, planted_run):
    cache, run = planted_run(1200, 16)
    register(Method("prior", "Prior routing", "stage-1 routing, no budget", 1, "budget", "micro", False, f"{__name__}:Prior"))
    try:
        results = run_adapt(cache, run, tmp_path / "out", AdaptConfig(budgets=[5], seeds=2, methods=["prior", "micro"]), plot=False)
    finally:
        unregister("prior")
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert {r["method"] for r in rows} == {"prior", "micro"}
    assert results["methods"] == ["micro", "prior"] and "prior" in results["timings_s"]["methods"]
    assert 0.5 < results["summary"]["5"]["prior"]["Average"]["mean"] <= 1.0
    with pytest.raises(KeyError, match="unknown method 'prior'"):
        select_methods(["prior"])


def test_methods_groups_and_subtraction():
    assert select_methods(["default", "-baselines"]) == [m for m in GROUPS["default"] if m not in GROUPS["baselines"]]
    assert set(select_methods(["all"])) >= set(GROUPS["peers"]) | set(GROUPS["default"])
    assert select_methods(["micro", "upper"]) == ["micro", "stage1-best", "oracle"]
    with pytest.raises(ValueError, match="selects no method"):
        select_methods(["micro", "-micro"])
    with pytest.raises(KeyError, match="groups: "):
        AdaptConfig(methods=["mikro"])


def test_options_reach_the_method_and_unknown_ones_are_refused(tmp_path, planted_run):
    cache, run = planted_run(1200, 16)
    with pytest.raises(ValueError, match="drm has no option component; its options: components, temperature"):
        run_adapt(cache, run, tmp_path / "a", AdaptConfig(methods=["drm"], options={"drm": {"component": 2}}))
    with pytest.raises(ValueError, match="options for lore: no selected method reads them"):
        run_adapt(cache, run, tmp_path / "b", AdaptConfig(methods=["micro"], options={"lore": {"rank": 2}}))
    with pytest.raises(ValueError, match="micro: batch_size must be >= 1"):
        run_adapt(cache, run, tmp_path / "c", AdaptConfig(methods=["micro"], options={"micro": {"batch_size": 0}}))


def test_removed_adapt_options_name_what_replaced_them(tmp_path):
    from typer.testing import CliRunner

    from micro.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["adapt", "c.h5", "run", "--out", str(tmp_path / "o"), "--router-min-steps", "30"])
    assert result.exit_code != 0 and "router_min_steps was removed" in result.output and "epochs" in result.output
    (tmp_path / "c.yaml").write_text("drm_components: 4\n")
    result = runner.invoke(app, ["adapt", "c.h5", "run", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml")])
    assert "drm_components was removed (drm's option: --set drm.components=N)" in result.output
