"""Command options come from the config dataclasses: defaults shown once, --config files, flags override."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from micro.cli import app
from micro.cli._options import _default, _show
from micro.heads import MixtureConfig
from micro.heads.config import SimulateConfig
from micro.reward.config import ExportConfig, ScoreConfig, ServeConfig
from micro.router import AdaptConfig
from micro.router.config import KAblationConfig

runner = CliRunner()


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], terminal_width=400, env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(("command", "cls", "skipped", "renamed"), [
    ("fit-mixture", MixtureConfig, ("ensemble_prior",), {}),
    ("adapt", AdaptConfig, (), {"options": "--set", "baseline_runs": "--baselines"}),
])
def test_every_config_field_is_an_option_showing_its_one_default(command, cls, skipped, renamed):
    text = _help(command)
    for f in fields(cls):
        if f.name in skipped:
            continue
        assert renamed.get(f.name, "--" + f.name.replace("_", "-")) in text, f.name
    defaults = cls()
    assert f"[default: {defaults.k if cls is MixtureConfig else defaults.seeds}]" in text


def test_stage2_is_small_enough_to_read():
    """At most 15 AdaptConfig fields and 25 options on `micro adapt --help`; per-method options live in --set."""
    result = runner.invoke(app, ["adapt", "--help"], env={"COLUMNS": "200"})
    options = [line for line in result.output.splitlines() if line.lstrip("│ *").startswith("-")]
    assert len(fields(AdaptConfig)) <= 15 and len(options) <= 25, (len(fields(AdaptConfig)), len(options))


def test_stage1_is_small_enough_to_read():
    """At most 20 config fields and 25 options on `micro fit-mixture --help` (ensemble_prior: --config and --paper)."""
    result = runner.invoke(app, ["fit-mixture", "--help"], env={"COLUMNS": "200"})
    options = [line for line in result.output.splitlines() if line.lstrip("│ *").startswith("-")]
    assert len(fields(MixtureConfig)) <= 20 and len(options) <= 25, (len(fields(MixtureConfig)), len(options))


@pytest.mark.parametrize(("command", "cls"), [("score", ScoreConfig), ("export", ExportConfig), ("serve", ServeConfig),
                                             ("simulate", SimulateConfig), ("sweep-k", KAblationConfig)])
def test_use_commands_list_every_config_field_with_its_default(command, cls):
    text = _help(command)
    assert f"--config <str> JSON or YAML file of {cls.__name__} fields" in text
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        option = re.search(rf"│ {flag}(?: --no-{flag[2:]})? <", text)
        assert option, f.name
        rest = text[option.end():]
        assert rest.index(f"[default: {_show(_default(f))}]") < rest.index("│ --"), f.name  # in this option's row


def test_sweep_k_defaults_are_the_stage_configs_own():
    config = KAblationConfig()
    assert (config.seeds, config.epochs, config.seed) == (AdaptConfig().seeds, MixtureConfig().epochs, MixtureConfig().seed)
    assert config.stage1(paper=True) == MixtureConfig.paper() and config.stage2() == AdaptConfig()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("micro ")


@pytest.fixture
def planted(tmp_path):
    cache = tmp_path / "sim.h5"
    assert runner.invoke(app, ["simulate", "--out", str(cache), "--pairs", "600", "--dim", "8"]).exit_code == 0
    return cache


def test_config_file_sets_fields_and_flags_override_it(planted, tmp_path):
    cfg = tmp_path / "stage1.yaml"
    cfg.write_text("k: 2\nepochs: 1\nseed: 7\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit-mixture", str(planted), "--out", str(out), "--config", str(cfg), "--seed", "3"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["k"], saved["epochs"], saved["seed"]) == (2, 1, 3)

    # a run's own config.json is a valid --config: the resolved config is reused as is
    again = tmp_path / "run2"
    result = runner.invoke(app, ["fit-mixture", str(planted), "--out", str(again), "--config", str(out / "config.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((again / "config.json").read_text())["config"] == saved


def test_simulate_config_file_sets_fields_flags_override_and_the_cache_records_them(tmp_path):
    from micro.heads import load_truth

    cfg = tmp_path / "sim.yaml"
    cfg.write_text("groups: 2\ndim: 8\npairs: 400\nseed: 5\nregime: shared\nscale: 2.5\n")
    out = tmp_path / "sim.h5"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--config", str(cfg), "--seed", "3", "--dim", "6"])
    assert result.exit_code == 0, result.output
    assert "2 groups, dim 6, regime shared" in result.output
    expected = SimulateConfig(groups=2, dim=6, pairs=400, seed=3, regime="shared", scale=2.5).resolved().to_dict()
    params = load_truth(out).params
    assert {k: params[k] for k in expected} == expected and params["conflict"] == 1.0  # resolved for 'shared'
    bad = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x.h5"), "--weight-floor", "1.5"])
    assert bad.exit_code == 2 and "--weight-floor must be in [0, 1]" in bad.output and not (tmp_path / "x.h5").exists()


def test_sweep_k_config_file_sets_fields_flags_override_and_out_records_them(planted, tmp_path):
    cfg = tmp_path / "k.json"
    cfg.write_text(json.dumps({"k": [1, 2, 3], "epochs": 1, "seed": 4}))
    out = tmp_path / "k"
    result = runner.invoke(app, ["sweep-k", str(planted), "--out", str(out), "--config", str(cfg), "--k", "2,1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sweep_k_config.json").read_text())
    assert saved["config"] == {**KAblationConfig().to_dict(), "k": [2, 1], "epochs": 1, "seed": 4}
    assert (saved["stage1"]["epochs"], saved["stage1"]["seed"], saved["stage2"]) == (1, 4, None)
    assert json.loads((out / "k_ablation.json").read_text())["ks"] == [1, 2]
    assert json.loads((out / "k2" / "config.json").read_text())["config"]["seed"] == 4
    bad = runner.invoke(app, ["sweep-k", str(planted), "--out", str(tmp_path / "k0"), "--k", "0,2"])
    assert bad.exit_code == 2 and "--k must be a list of positive integers" in bad.output


@pytest.mark.parametrize(("text", "suffix", "expected"), [
    ("kk: 3\n", ".yaml", "unknown field(s) kk"),
    ("{not json", ".json", "not valid JSON"),
    ("- 1\n- 2\n", ".yml", "expected a mapping"),
])
def test_bad_config_file_is_one_line_naming_the_file(planted, tmp_path, text, suffix, expected):
    cfg = tmp_path / ("bad" + suffix)
    cfg.write_text(text)
    result = runner.invoke(app, ["fit-mixture", str(planted), "--out", str(tmp_path / "r"), "--config", str(cfg)])
    assert result.exit_code == 2
    assert expected in result.output and str(cfg) in result.output
    assert not (tmp_path / "r").exists()


def test_list_flag_names_the_flag_on_a_bad_value(planted, tmp_path):
    result = runner.invoke(app, ["adapt", str(planted), str(tmp_path), "--out", str(tmp_path / "a"), "--budgets", "5,abc"])
    assert result.exit_code == 2
    assert "--budgets" in result.output and "'abc'" in result.output


def test_compare_puts_results_side_by_side_naming_what_differs(planted, tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["fit-mixture", str(planted), "--out", str(run), "--k", "2", "--epochs", "1"]).exit_code == 0
    outs = []
    for tau in ("1.0", "0.001"):
        out = tmp_path / f"adapt-{tau}"
        res = runner.invoke(app, ["adapt", str(planted), str(run), "--out", str(out), "--budgets", "5,10", "--seeds", "2",
                                  "--tau", tau, "--no-baselines", "--epochs", "2"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    res = runner.invoke(app, ["compare", *map(str, outs), "--out", str(tmp_path / "cmp")], terminal_width=200)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["budget"] == 10
    assert [r["differs"] for r in data["results"]] == [{"adapt.tau": 1.0}, {"adapt.tau": 0.001}]
    assert "adapt.tau" in (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0]
    again = runner.invoke(app, ["compare", *map(str, outs), "--out", str(tmp_path / "cmp")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(app, ["compare", str(outs[0]), str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no results.json" in missing.output


def test_main_maps_project_errors_to_one_line_and_exit_2_and_keeps_bugs_loud(monkeypatch, capsys):
    import micro.cli as cli
    from micro.embedcache.store import CacheError

    def refuse():
        raise CacheError("cache x.h5 is unfinished; rerun the same `micro embed` command")

    monkeypatch.setattr(cli, "app", refuse)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: cache x.h5 is unfinished; rerun the same `micro embed` command\n"

    def bug():
        raise ValueError("not a project error")

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(ValueError, match="not a project error"):
        cli.main()
