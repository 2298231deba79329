"""Every preference layout people train reward models on, written small in the shape of the real datasets,
loads with no option but the file name, in JSONL and parquet; folders keep the dataset's split names."""

import json

import pandas as pd
import pytest

from micro.data import PreferenceDataError, load_preferences, summarize, table_sha256
from micro.data.formats import (CONVERSATIONAL_EXPLICIT, CONVERSATIONAL_IMPLICIT, PROMPT_AND_CONVERSATIONS,
                                STANDARD_EXPLICIT, STANDARD_IMPLICIT, TRANSCRIPTS, TWO_RESPONSES)
from micro.data.pairs import split_common_prefix


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write(path, rows):
    """rows as JSONL or parquet, by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load_both(tmp_path, rows, **kwargs):
    """Load rows from JSONL and from parquet; both must give the same table."""
    jsonl = load_preferences(str(write(tmp_path / "rows.jsonl", rows)), **kwargs)
    parquet = load_preferences(str(write(tmp_path / "rows.parquet", rows)), **kwargs)
    assert table_sha256(jsonl) == table_sha256(parquet)
    assert list(jsonl.attrs["formats"].values()) == list(parquet.attrs["formats"].values())
    return parquet


def fmt(df):
    (only,) = set(df.attrs["formats"].values())
    return only


# ---- TRL's four preference formats -------------------------------------------------------------------

def test_standard_explicit(tmp_path):
    df = load_both(tmp_path, [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}])
    assert fmt(df) == STANDARD_EXPLICIT
    assert df.iloc[0][["prompt", "chosen", "rejected"]].tolist() == ["The sky is", " blue.", " green."]


def test_a_user_column_is_the_attribute_when_there_is_none(tmp_path):
    """Annotator ids in a `user` column become the attribute (and the preview says each attribute is a user);
    an `attribute` column, or an explicit --attribute-key, wins over it."""
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "user": f"u{i % 2}"} for i in range(4)]
    df = load_both(tmp_path, rows)
    assert df["attribute"].tolist() == ["u0", "u1", "u0", "u1"]
    assert summarize(df)["users"]
    with_attribute = load_both(tmp_path / "a", [dict(r, attribute="x") for r in rows])
    assert set(with_attribute["attribute"]) == {"x"} and not summarize(with_attribute)["users"]
    with_context = load_both(tmp_path / "c", [dict(r, context="I like short answers") for r in rows])
    assert not summarize(with_context)["users"]


def test_standard_implicit_takes_the_common_prefix_as_trl_does(tmp_path):
    df = load_both(tmp_path, [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert fmt(df) == STANDARD_IMPLICIT
    # TRL's extract_prompt: the space before the first difference starts the responses
    assert df.iloc[0][["prompt", "chosen", "rejected"]].tolist() == ["The sky is", " blue.", " green."]
    assert split_common_prefix("2+2=4", "2+2=5") == ("2+2=", "4", "5")
    with pytest.raises(ValueError, match="no prompt can be split off"):
        split_common_prefix("Yes", "Yes, sure")
    with pytest.raises(ValueError, match="share no leading text"):
        split_common_prefix("Blue.", "Green.")


def test_conversational_explicit(tmp_path):
    rows = [{"prompt": [user("What color is the sky?")], "chosen": [bot("It is blue.")],
             "rejected": [bot("It is green.")]}]
    df = load_both(tmp_path, rows)
    assert fmt(df) == CONVERSATIONAL_EXPLICIT
    assert df.iloc[0]["prompt"] == [user("What color is the sky?")]
    assert df.iloc[0][["chosen", "rejected"]].tolist() == ["It is blue.", "It is green."]


def test_conversational_implicit_multi_turn_keeps_every_earlier_turn(tmp_path):
    history = [user("Hi"), bot("Hello! How can I help?"), user("A joke please")]
    df = load_both(tmp_path, [{"chosen": history + [bot("Why did the chicken cross the road?")],
                               "rejected": history + [bot("No.")]}])
    assert fmt(df) == CONVERSATIONAL_IMPLICIT
    assert df.iloc[0]["prompt"] == history
    assert df.iloc[0][["chosen", "rejected"]].tolist() == ["Why did the chicken cross the road?", "No."]


def test_conversational_explicit_multi_turn_completion_moves_earlier_turns_into_the_prompt(tmp_path):
    rows = [{"prompt": [user("Hi")], "chosen": [bot("Hello."), user("Joke?"), bot("Knock knock.")],
             "rejected": [bot("Hello."), user("Joke?"), bot("No.")]}]
    df = load_both(tmp_path, rows)
    assert df.iloc[0]["prompt"] == [user("Hi"), bot("Hello."), user("Joke?")]
    assert df.iloc[0][["chosen", "rejected"]].tolist() == ["Knock knock.", "No."]


def test_conversations_that_diverge_before_the_last_turn_are_refused(tmp_path):
    rows = [{"chosen": [user("Hi"), bot("Hello."), user("Joke?"), bot("Knock knock.")],
             "rejected": [user("Hi"), bot("Go away."), user("Joke?"), bot("No.")]}]
    with pytest.raises(PreferenceDataError, match=r"rows\.jsonl row 1: .*differ at turn 2, before their last turn"):
        load_preferences(str(write(tmp_path / "rows.jsonl", rows)))


# ---- the layouts of widely used datasets -----------------------------------------------------------------

def ultrafeedback_row(i, prompt=None):
    prompt_text = f"Question {i}?"
    return {"prompt": prompt if prompt is not None else prompt_text, "prompt_id": f"id{i}",
            "chosen": [user(prompt_text), bot(f"Good answer {i}.")],
            "rejected": [user(prompt_text), bot(f"Bad answer {i}.")],
            "messages": [user(prompt_text), bot(f"Good answer {i}.")], "score_chosen": 8.0, "score_rejected": 3.0}


def test_ultrafeedback_binarized_checks_and_strips_the_repeated_prompt(tmp_path):
    df = load_both(tmp_path, [ultrafeedback_row(0), ultrafeedback_row(1)])
    assert fmt(df) == PROMPT_AND_CONVERSATIONS
    assert df.iloc[0][["prompt", "chosen", "rejected"]].tolist() == ["Question 0?", "Good answer 0.", "Bad answer 0."]
    with pytest.raises(PreferenceDataError, match=r"row 2: the prompt column \('Something else\?'\) does not match "
                                                  r"the conversations' last user turn \('Question 1\?'\)"):
        load_preferences(str(write(tmp_path / "bad.jsonl", [ultrafeedback_row(0), ultrafeedback_row(1, "Something else?")])))


def test_ultrafeedback_split_files_keep_their_own_split_names(tmp_path):
    """The hub's files are train_prefs-*.parquet, train_sft-*.parquet, ...: they are different splits."""
    for folder in (tmp_path / "flat", tmp_path / "hub" / "data"):
        write(folder / "train_prefs-00000-of-00001.parquet", [ultrafeedback_row(i) for i in range(3)])
        write(folder / "train_sft-00000-of-00001.parquet", [ultrafeedback_row(i) for i in range(10, 14)])
        write(folder / "test_prefs-00000-of-00001.parquet", [ultrafeedback_row(i) for i in range(20, 22)])
    for root in (tmp_path / "flat", tmp_path / "hub"):
        s = summarize(load_preferences(str(root)))
        assert {k: v["pairs"] for k, v in s["splits"].items()} == {"train_prefs": 3, "train_sft": 4, "test_prefs": 2}
        assert set(s["formats"].values()) == {PROMPT_AND_CONVERSATIONS}
    assert len(load_preferences(str(tmp_path / "hub"), split="train_sft")) == 4


def test_a_readme_configs_section_names_the_splits(tmp_path):
    write(tmp_path / "files" / "a.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    write(tmp_path / "files" / "b.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "d"}])
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                        "  - split: prefs\n    path: files/a.jsonl\n  - split: held_out\n"
                                        "    path: files/b.jsonl\n---\n# a card\n")
    assert load_preferences(str(tmp_path))[["prompt", "split"]].values.tolist() == [["p", "prefs"], ["q", "held_out"]]


HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: Why "
                "did the chicken cross the road?",
      "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: No."}


def test_hh_rlhf_transcripts(tmp_path):
    df = load_both(tmp_path, [HH])
    assert fmt(df) == TRANSCRIPTS
    assert df.iloc[0]["prompt"] == [user("Hi there"), bot("Hello! How can I help?"), user("Tell me a joke")]
    assert df.iloc[0][["chosen", "rejected"]].tolist() == ["Why did the chicken cross the road?", "No."]


def test_skywork_style_conversations_with_a_source_column(tmp_path):
    rows = [{"chosen": [user("Sum 2 and 2."), bot("4")], "rejected": [user("Sum 2 and 2."), bot("5")],
             "source": "magpie_ultra"}]
    df = load_both(tmp_path, rows)
    assert fmt(df) == CONVERSATIONAL_IMPLICIT
    assert df.iloc[0][["prompt", "chosen", "rejected", "attribute"]].tolist() == [[user("Sum 2 and 2.")], "4", "5",
                                                                                  "default"]


def test_helpsteer3_style_two_responses_and_a_preference_score(tmp_path):
    rows = [{"domain": "general", "language": "english", "context": [user("Name a fruit.")],
             "response1": "Apple.", "response2": "Chair.", "overall_preference": -2},
            {"domain": "code", "language": "english", "context": [user("Print hi in Python.")],
             "response1": "echo hi", "response2": "print('hi')", "overall_preference": 3},
            {"domain": "general", "language": "english", "context": [user("Tie?")],
             "response1": "a", "response2": "b", "overall_preference": 0}]
    df = load_both(tmp_path, rows)
    assert fmt(df) == TWO_RESPONSES
    assert df[["chosen", "rejected"]].values.tolist() == [["Apple.", "Chair."], ["print('hi')", "echo hi"]]
    assert df.iloc[0]["prompt"] == [user("Name a fruit.")] and df["context"].isna().all()
    assert any("dropped 1 tie" in w for w in df.attrs["warnings"])


# ---- datasets folders ----------------------------------------------------------------------------------

def test_a_save_to_disk_folder_keeps_its_splits(tmp_path):
    import datasets

    dsdict = datasets.DatasetDict({
        "train_prefs": datasets.Dataset.from_list([ultrafeedback_row(i) for i in range(3)]),
        "test_prefs": datasets.Dataset.from_list([ultrafeedback_row(i) for i in range(10, 12)])})
    dsdict.save_to_disk(str(tmp_path / "saved"))
    df = load_preferences(str(tmp_path / "saved"))
    assert summarize(df)["splits"]["train_prefs"]["pairs"] == 3 and set(df["split"]) == {"train_prefs", "test_prefs"}
    assert len(load_preferences(str(tmp_path / "saved"), split="test_prefs", limit=1)) == 1
    datasets.Dataset.from_list([HH]).save_to_disk(str(tmp_path / "one"))
    assert load_preferences(str(tmp_path / "one"))["split"].tolist() == ["train"]


def test_unknown_files_in_a_data_folder_are_listed_in_a_warning(tmp_path):
    write(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    write(tmp_path / "test.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    (tmp_path / "notes.txt").write_text("not data")
    write(tmp_path / "extra" / "more.parquet", [{"prompt": "r", "chosen": "a", "rejected": "b"}])
    (tmp_path / "LICENSE").write_text("MIT")  # repository files are not reported
    df = load_preferences(str(tmp_path))
    assert df["split"].tolist() == ["train", "test"]
    (warning,) = [w for w in df.attrs["warnings"] if "ignored" in w]
    assert "ignored 2 files" in warning and "extra/more.parquet" in warning and "notes.txt" in warning
    assert "LICENSE" not in warning


def test_a_single_file_is_named_by_datasets_file_name_rules(tmp_path):
    path = write(tmp_path / "test-00000-of-00001.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert load_preferences(str(path))["split"].tolist() == ["test"]


def test_helpsteer2_rated_responses_point_to_the_recipe_that_pairs_them(tmp_path):
    rows = [dict(prompt="A?", response=r, helpfulness=h, correctness=2, coherence=3, complexity=1, verbosity=1)
            for r, h in (("a1", 4), ("a2", 1))]
    path = write(tmp_path / "train.jsonl", rows)
    with pytest.raises(PreferenceDataError, match=r"train\.jsonl holds rated responses \(HelpSteer2's layout\).*helpsteer2 --path"):
        load_preferences(str(path))
    assert load_preferences("helpsteer2", path=str(path))[["chosen", "attribute"]].values.tolist() == [["a1", "helpfulness"]]
