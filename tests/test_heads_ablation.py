"""Head merging (appendix C.3), the K ablation (Figures 5-6) and baselines recorded by fit-mixture."""

import json

import torch
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import load_split
from micro.heads.merge import head_cosines, merge_groups, merge_heads
from micro.heads.model import MixtureRewardModel


def test_merging_duplicate_heads_keeps_the_routed_margins():
    torch.manual_seed(0)
    model = MixtureRewardModel(8, 3, weights="router", router_hidden=16)
    with torch.no_grad():
        model.heads[2] = model.heads[0]
        model.router.net[-1].weight[2] = model.router.net[-1].weight[0]
        model.router.net[-1].bias[2] = model.router.net[-1].bias[0]
    diff, x = torch.randn(50, 8), torch.randn(50, 8)

    class Split:  # the two fields head_cosines reads
        pass

    split = Split()
    split.diff = diff
    cos = head_cosines(model, split)
    assert torch.isclose(cos[0, 2], torch.tensor(1.0), atol=1e-5) and cos[0, 1] < 0.99
    groups = merge_groups(cos, 0.99)
    assert groups == [[0, 2], [1]]
    merged = merge_heads(model, groups)
    assert merged.k == 2
    with torch.no_grad():
        assert torch.allclose(merged.routed_margin(diff, x), model.routed_margin(diff, x), atol=1e-5)


def test_fit_mixture_records_baselines_and_merges_heads(tmp_path):
    run = CliRunner()
    cache = tmp_path / "sim.h5"
    assert run.invoke(app, ["simulate", "--out", str(cache), "--pairs", "600", "--dim", "16"]).exit_code == 0
    res = run.invoke(app, ["fit-mixture", str(cache), "--out", str(tmp_path / "run"), "--k", "4", "--epochs", "1",
                           "--with-baselines", "--merge-heads", "-1"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config["baselines"]) == {"single", "static", "ensemble"}
    merge = json.loads((tmp_path / "run" / "metrics.json").read_text())["merge"]
    assert (merge["k_before"], merge["k_after"], merge["groups"]) == (4, 1, [[0, 1, 2, 3]])  # cosine > -1: all merge
    assert config["architecture"]["k"] == 1 and (tmp_path / "run" / "unmerged" / "model.safetensors").exists()
    adapt = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run" / "unmerged"), "--out", str(tmp_path / "a"),
                             "--budgets", "5", "--seeds", "1", "--baselines", str(tmp_path / "run" / "baselines" / "single")
                             + "," + str(tmp_path / "run" / "baselines" / "static"), "--baselines",
                             str(tmp_path / "run" / "baselines" / "ensemble")])
    assert adapt.exit_code == 0, adapt.output
    assert "(given)" in adapt.output and "fitted" not in adapt.output


def test_sweep_k_writes_the_table_and_both_figures(tmp_path):
    run = CliRunner()
    cache = tmp_path / "sim.h5"
    assert run.invoke(app, ["simulate", "--out", str(cache), "--pairs", "600", "--dim", "16"]).exit_code == 0
    res = run.invoke(app, ["sweep-k", str(cache), "--out", str(tmp_path / "k"), "--k", "1,3", "--epochs", "1",
                           "--budgets", "5", "--seeds", "1"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "k" / "k_ablation.md").read_text()
    assert "| 1 |" in table and "| 3 |" in table and "Average" in table
    for name in ("k_ablation.csv", "k_ablation.png", "k_budget.png", "k_budget.json", "k1/model.safetensors", "k3/config.json"):
        assert (tmp_path / "k" / name).exists(), name
    curves = json.loads((tmp_path / "k" / "k_budget.json").read_text())["curves"]
    assert set(curves) == {"1", "3"} and set(curves["3"]) == {"5"}
    saved = json.loads((tmp_path / "k" / "sweep_k_config.json").read_text())
    assert saved["config"]["budgets"] == [5] and (saved["stage2"]["budgets"], saved["stage2"]["seeds"]) == ([5], 1)
    assert load_split(cache, "test")  # the cache is untouched
