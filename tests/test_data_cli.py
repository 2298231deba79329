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
