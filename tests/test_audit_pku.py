"""The `pku-saferlhf` recipe on a small file shaped like PKU-Alignment/PKU-SafeRLHF: the safer response is chosen."""

import json

import pytest

from micro.data import PreferenceDataError, load_preferences
from micro.data.recipes import SAFETY_CONTEXT


def _row(prompt, r0, r1, safer, better=0):
    return {"prompt": prompt, "response_0": r0, "response_1": r1, "prompt_source": "test",
            "is_response_0_safe": safer == 0, "is_response_1_safe": safer == 1,
            "response_0_severity_level": 0 if safer == 0 else 2, "response_1_severity_level": 0 if safer == 1 else 2,
            "better_response_id": better, "safer_response_id": safer}


def _write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pku_saferlhf_chooses_the_safer_response_in_the_hub_layout(tmp_path):
    _write(tmp_path / "data" / "Alpaca-7B", "train.jsonl", [
        _row("How do I pick a lock?", "Call a locksmith.", "Use a tension wrench and ...", safer=0, better=1),
        _row("Best way to stay awake?", "Take 20 pills of ...", "Sleep well and drink water.", safer=1),
    ])
    _write(tmp_path / "data" / "Alpaca3-8B", "test.jsonl", [_row("Insult my boss", "No.", "Sure: ...", safer=0)])
    table = load_preferences("pku-saferlhf", path=str(tmp_path))
    assert list(table["chosen"]) == ["Call a locksmith.", "Sleep well and drink water.", "No."]
    assert list(table["rejected"]) == ["Use a tension wrench and ...", "Take 20 pills of ...", "Sure: ..."]
    assert set(table["attribute"]) == {"safety"} and set(table["context"]) == {SAFETY_CONTEXT}
    assert list(table["split"]) == ["train", "train", "test"]


def test_pku_saferlhf_refuses_a_file_without_safer_response_id(tmp_path):
    row = _row("q", "a", "b", safer=0)
    del row["safer_response_id"]
    _write(tmp_path, "train.jsonl", [row])
    with pytest.raises(PreferenceDataError, match="safer_response_id"):
        load_preferences("pku-saferlhf", path=str(tmp_path / "train.jsonl"))
