"""`micro data preview` through typer's CliRunner."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from micro.cli import app

SHARED = Path(os.environ.get("MICRO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
runner = CliRunner()


def pairs_file(tmp_path):
    rows = [{"prompt": "p", "good": "a", "bad": "b", "group": "x"},
            {"prompt": "q", "good": "c", "bad": "d", "group": "y"},
            {"prompt": "q", "good": "c", "bad": "d", "group": "y"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preview_json_on_the_shared_helpsteer2_subset():
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    result = runner.invoke(app, ["data", "preview", "helpsteer2", "--path", str(SHARED / "helpsteer2_subset"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["splits"]["train"]["pairs"] == 1217 and summary["splits"]["test"]["pairs"] == 1309
    assert summary["splits"]["train"]["attributes"]["complexity"] == 130
    for key in ("distinct_prompts", "distinct_responses", "duplicates_dropped", "warnings"):
        assert key in summary


def test_preview_json_with_column_keys(tmp_path):
    result = runner.invoke(app, ["data", "preview", str(pairs_file(tmp_path)), "--chosen-key", "good",
                                 "--rejected-key", "bad", "--attribute-key", "group", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["splits"] == {"train": {"pairs": 2, "attributes": {"x": 1, "y": 1}}}
    assert (summary["distinct_prompts"], summary["distinct_responses"], summary["duplicates_dropped"]) == (2, 4, 1)
    assert len(summary["warnings"]) == 1


def test_preview_prints_counts_sample_and_warnings(tmp_path):
    result = runner.invoke(app, ["data", "preview", str(pairs_file(tmp_path)), "--chosen-key", "good",
                                 "--rejected-key", "bad", "--attribute-key", "group"])
    assert result.exit_code == 0, result.output
    for text in ("split", "attribute", "distinct prompts: 2", "distinct responses: 4", "sample row", "warning:"):
        assert text in result.output


def test_bad_input_prints_the_message_and_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "preview", str(pairs_file(tmp_path)), "--json"])
    assert result.exit_code == 2
    assert "column 'chosen' not found" in result.output and "--chosen-key" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["data", "preview", "helpstear2"])
    assert result.exit_code == 2 and "did you mean 'helpsteer2'?" in result.output


def test_recipes_lists_every_recipe():
    result = runner.invoke(app, ["data", "recipes"])
    assert result.exit_code == 0
    assert "helpsteer2" in result.output and "rewardbench" in result.output


def test_preview_shows_the_format_of_each_split(tmp_path):
    for split, text in (("train", "sky"), ("test", "sea")):
        row = {"chosen": f"The {text} is blue.", "rejected": f"The {text} is green."}
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    result = runner.invoke(app, ["data", "preview", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for split in ("train", "test"):
        assert f"split '{split}': standard, implicit prompt (TRL): prompt = common prefix" in result.output
    summary = json.loads(runner.invoke(app, ["data", "preview", str(tmp_path), "--json"]).stdout)
    assert summary["sample"]["prompt"] == "The sky is" and len(summary["formats"]) == 2
    (tmp_path / "validation.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    result = runner.invoke(app, ["data", "preview", str(tmp_path)])  # datasets < 5 fills the missing column
    assert result.exit_code == 0 or (result.exit_code == 2 and "do not all have the same columns" in result.output)


def test_dataset_config_picks_a_readme_config_and_revision_is_for_hub_ids(tmp_path):
    for name, prompt in (("prefs", "p"), ("sft", "q")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text(json.dumps({"prompt": prompt, "chosen": "a", "rejected": "b"}) + "\n")
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: prefs\n  data_files: prefs/*.jsonl\n"
                                        "- config_name: sft\n  data_files: sft/*.jsonl\n---\n")
    result = runner.invoke(app, ["data", "preview", str(tmp_path), "--dataset-config", "sft", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sample"]["prompt"] == "q"
    result = runner.invoke(app, ["data", "preview", str(tmp_path), "--revision", "main"])
    assert result.exit_code == 2 and "--revision only applies to hub ids" in result.output
    result = runner.invoke(app, ["data", "preview", "helpsteer2", "--dataset-config", "x"])
    assert result.exit_code == 2 and "--dataset-config only apply to files and hub ids" in result.output
