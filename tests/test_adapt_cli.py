"""`micro adapt` from the command line: files, the printed table, --eval-cache, and a clear refusal."""

import csv
import json
import shutil

from typer.testing import CliRunner

from micro.cli import app


def test_adapt_cli_writes_results_and_evaluates_on_another_cache(tmp_path, planted_run):
    run = CliRunner()
    cache, _ = planted_run(pairs=1200, dim=16)
    other = tmp_path / "other.h5"
    shutil.copy(cache, other)  # same backbone identity: the cross-dataset path accepts it

    out = tmp_path / "adapt"
    res = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(out), "--budgets", "5,10",
                           "--seeds", "2", "--eval-cache", str(other), "--no-baselines"])
    assert res.exit_code == 0, res.output
    assert "Stage-2 accuracy" in res.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {"budget", "seed", "attribute", "method", "accuracy"} <= set(rows[0])
    assert {r["method"] for r in rows} >= {"micro", "budget-bt", "oracle", "micro-refine", "stage1-best", "micro-hyre"}
    assert {r["budget"] for r in rows} == {"5", "10"}
    assert (out / "table.md").exists() and (out / "routers" / "b10_s1.safetensors").exists()

    before = (out / "results.json").read_bytes()
    too_big = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(out), "--budget", "100000", "--overwrite"])
    assert too_big.exit_code == 2
    assert "budget 100000 is larger than" in too_big.output and "group0" in too_big.output
    assert (out / "results.json").read_bytes() == before  # a refused replacement leaves the old results


def test_adapt_paper_notes_its_preset_and_refuses_a_preset_without_paper(tmp_path):
    run = CliRunner()
    cache = tmp_path / "sim.h5"
    assert run.invoke(app, ["simulate", "--out", str(cache), "--pairs", "600", "--dim", "16"]).exit_code == 0
    fit = run.invoke(app, ["fit-mixture", str(cache), "--out", str(tmp_path / "run"), "--paper", "--epochs", "1"])
    assert fit.exit_code == 0 and "--paper preset 'other'" in fit.output and "K 10" in fit.output
    res = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(tmp_path / "a"), "--budget", "5",
                           "--seeds", "1", "--no-baselines", "--paper", "--paper-dataset", "rpr", "--json"])
    assert res.exit_code == 0, res.output
    assert "--paper preset 'rpr' (given): K 10, tau 0.0001" in res.output
    assert "no (context + prompt, response) embeddings" in json.loads((tmp_path / "a" / "results.json").read_text())["notes"][0]
    bad = run.invoke(app, ["adapt", str(cache), str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--paper-dataset", "rpr"])
    assert bad.exit_code == 2 and "give --paper too" in bad.output
