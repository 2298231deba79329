"""Loading local files into the preference table: formats, column mapping, implicit pairs, validation."""

import gzip
import json

import pandas as pd
import pytest

from micro.data import COLUMNS, PreferenceDataError, load_preferences, summarize, table_sha256
from micro.data.pairs import parse_transcript, split_last_turn, split_pair


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
]


def test_jsonl_explicit_gives_six_columns_with_defaults(tmp_path):
    df = load_preferences(str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)))
    assert list(df.columns) == list(COLUMNS)
    assert df["chosen"].tolist() == ["4", "Blue."]
    assert set(df["attribute"]) == {"default"}
    assert df["context"].tolist() == [None, None]
    assert set(df["split"]) == {"train"}
    assert df.attrs["duplicates_dropped"] == 0 and df.attrs["warnings"] == []


def test_every_file_format_loads_the_same_table(tmp_path):
    rows = [dict(r, attribute="math", context="be exact", split="test") for r in PAIRS]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "a.jsonl.gz", rows, gz=True)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    hashes = {ext: table_sha256(load_preferences(str(tmp_path / f"a.{ext}")))
              for ext in ("jsonl", "jsonl.gz", "json", "parquet", "csv")}
    assert len(set(hashes.values())) == 1, hashes


def test_folder_reads_every_file_and_takes_split_from_the_file_name(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:1])
    df = load_preferences(str(tmp_path))
    assert df["split"].tolist() == ["train", "test"]  # train first whatever the names sort as


def test_key_options_map_other_column_names(tmp_path):
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "group": "g1", "why": "c",
             "part": "dev"} for r in PAIRS]
    df = load_preferences(str(write_jsonl(tmp_path / "x.jsonl", rows)), prompt_key="question", chosen_key="good",
                          rejected_key="bad", attribute_key="group", context_key="why", split_key="part")
    assert df.iloc[0].to_dict() == {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "attribute": "g1",
                                    "context": "c", "split": "dev"}


def test_conversation_prompt_and_trl_conversational_replies(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello!"}],
             "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}]
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")  # parquet returns numpy arrays of dicts
    df = load_preferences(str(tmp_path / "c.parquet"))
    assert df.iloc[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert (df.iloc[0]["chosen"], df.iloc[0]["rejected"]) == ("hello!", "go away")


HH = [{
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: No.",
}]


def test_implicit_transcripts_split_off_the_shared_multi_turn_prompt(tmp_path):
    df = load_preferences(str(write_jsonl(tmp_path / "hh.jsonl", HH)))
    row = df.iloc[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi there"},
                             {"role": "assistant", "content": "Hello! How can I help?"},
                             {"role": "user", "content": "Tell me a joke"}]
    assert (row["chosen"], row["rejected"]) == ("Why did the chicken cross the road?", "No.")


def test_transcripts_split_at_the_last_assistant_turn_even_if_replies_share_a_start():
    prompt, chosen, rejected = split_pair(None, "\n\nHuman: q\n\nAssistant: Sure, yes", "\n\nHuman: q\n\nAssistant: Sure, no")
    assert prompt == [{"role": "user", "content": "q"}] and (chosen, rejected) == ("Sure, yes", "Sure, no")
    assert parse_transcript("Human: a\n\nAssistant: b") == [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "b"}]


def test_implicit_conversations_take_every_earlier_turn_as_prompt():
    user = {"role": "user", "content": "q"}
    prompt, chosen, rejected = split_last_turn([user, {"role": "assistant", "content": "good"}],
                                               [user, {"role": "assistant", "content": "bad"}])
    assert prompt == [user] and (chosen, rejected) == ("good", "bad")
    with pytest.raises(ValueError, match="ends with a 'user' turn"):
        split_last_turn([user, {"role": "assistant", "content": "a"}, user], [user, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match="differ at turn 2, before their last turn"):
        split_last_turn([user, {"role": "assistant", "content": "a"}, user, {"role": "assistant", "content": "c"}],
                        [user, {"role": "assistant", "content": "b"}, user, {"role": "assistant", "content": "d"}])


def test_implicit_rows_that_cannot_be_split_name_the_row(tmp_path):
    bad = HH + [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"}]
    with pytest.raises(PreferenceDataError, match=r"bad\.jsonl row 2: the chosen and rejected conversations differ at turn 1"):
        load_preferences(str(write_jsonl(tmp_path / "bad.jsonl", bad)))


# ---- errors ----------------------------------------------------------------------------------------

def test_misspelled_column_suggests_the_closest_and_the_option(tmp_path):
    path = write_jsonl(tmp_path / "typo.jsonl", [{"prompt": "p", "choosen": "a", "rejected": "b"}])
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(str(path))
    msg = str(err.value)
    assert f"column 'chosen' not found in {path}" in msg
    assert "did you mean 'choosen'?" in msg and "--chosen-key" in msg


def test_missing_prompt_column_without_transcripts_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "np.jsonl", [{"promt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PreferenceDataError, match="column 'prompt' not found.*did you mean 'promt'.*--prompt-key"):
        load_preferences(str(path))


def test_an_explicitly_requested_optional_column_must_exist(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [dict(PAIRS[0], group="g")])
    with pytest.raises(PreferenceDataError, match="column 'grup' not found.*did you mean 'group'.*--attribute-key"):
        load_preferences(str(path), attribute_key="grup")


def test_a_near_miss_optional_column_earns_a_warning(tmp_path):
    df = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", [dict(PAIRS[0], atribute="g")])))
    assert df.iloc[0]["attribute"] == "default"
    assert any("'atribute'" in w and "--attribute-key" in w for w in df.attrs["warnings"])


@pytest.mark.parametrize("value, kind", [("", "is empty"), ("   ", "is empty"), (None, "is empty"), (3, "holds a int")])
def test_empty_or_non_text_values_name_file_row_and_column(tmp_path, value, kind):
    first = {"prompt": "q", "chosen": "c", "rejected": "d"}  # letters: pandas, which datasets falls back to, keeps them text
    path = write_jsonl(tmp_path / "e.jsonl", [first, {"prompt": "p", "chosen": "a", "rejected": value}])
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(str(path))
    # datasets < 5 refuses a JSON column that changes type, naming the file
    assert f"{path} row 2: column 'rejected' {kind}" in str(err.value) or (
        value == 3 and f"could not read {path} as json" in str(err.value) and "changed from string to number" in str(err.value))


def test_error_names_the_source_column_when_mapped(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "good": "", "rejected": "b"}])
    with pytest.raises(PreferenceDataError, match="row 1: column 'good' is empty"):
        load_preferences(str(path), chosen_key="good")


def test_identical_chosen_and_rejected_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", [PAIRS[0], {"prompt": "p", "chosen": "x", "rejected": "x"}])
    with pytest.raises(PreferenceDataError, match=r"same\.jsonl row 2: chosen and rejected are identical"):
        load_preferences(str(path))


def test_duplicate_pairs_are_dropped_counted_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [PAIRS[0], PAIRS[1], PAIRS[0], PAIRS[0]])
    df = load_preferences(str(path))
    assert len(df) == 2
    assert df.attrs["duplicates_dropped"] == 2
    assert any("dropped 2 duplicate pairs" in w and "dup.jsonl row 3" in w for w in df.attrs["warnings"])
    # same texts under another attribute are a different pair, not a duplicate
    other = write_jsonl(tmp_path / "attr.jsonl", [dict(PAIRS[0], attribute="a"), dict(PAIRS[0], attribute="b")])
    assert len(load_preferences(str(other))) == 2


def test_unknown_recipe_lists_recipes_and_suggests_the_closest():
    with pytest.raises(PreferenceDataError) as err:
        load_preferences("helpstear2")
    assert "did you mean 'helpsteer2'?" in str(err.value) and "rpr" in str(err.value)


def test_missing_file_unknown_extension_and_corrupt_files(tmp_path):
    with pytest.raises(PreferenceDataError, match="file not found: .*nope.jsonl"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(PreferenceDataError, match=r"data\.txt has an unsupported extension '\.txt'; use \.jsonl"):
        load_preferences(str(tmp_path / "data.txt"))
    (tmp_path / "bad.jsonl").write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(PreferenceDataError, match=r"could not read .*bad\.jsonl: row 2 is not valid JSON .*one JSON object per line"):
        load_preferences(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.json").write_text("[{\"prompt\": 1,")
    with pytest.raises(PreferenceDataError, match=r"could not read .*bad\.json as json"):
        load_preferences(str(tmp_path / "bad.json"))
    (tmp_path / "lines.json").write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps(PAIRS[1]) + "\n")
    assert len(load_preferences(str(tmp_path / "lines.json"))) == 2  # datasets reads JSON Lines named .json
    (tmp_path / "bad.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(PreferenceDataError, match=r"could not read .*bad\.parquet as parquet"):
        load_preferences(str(tmp_path / "bad.parquet"))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(PreferenceDataError, match=r"could not read .*bad\.jsonl\.gz"):
        load_preferences(str(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PreferenceDataError, match=r"empty\.jsonl holds no records"):
        load_preferences(str(tmp_path / "empty.jsonl"))


def test_split_filter_limit_and_unknown_split(tmp_path):
    for split in ("train", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", [dict(prompt=f"p{i}", chosen="a", rejected="b") for i in range(5)])
    assert summarize(load_preferences(str(tmp_path), limit=2))["splits"] == {
        "train": {"pairs": 2, "attributes": {"default": 2}}, "test": {"pairs": 2, "attributes": {"default": 2}}}
    assert set(load_preferences(str(tmp_path), split="test")["split"]) == {"test"}
    with pytest.raises(PreferenceDataError, match="split 'validation' not found.*available splits: train, test"):
        load_preferences(str(tmp_path), split="validation")
    with pytest.raises(PreferenceDataError, match="limit must be a positive number"):
        load_preferences(str(tmp_path), limit=0)


def test_a_split_column_still_sets_and_selects_the_split(tmp_path):
    rows = [dict(prompt=f"p{i}", chosen="a", rejected="b", split=s) for i in range(3) for s in ("train", "test")]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert summarize(load_preferences(str(path)))["splits"]["test"]["pairs"] == 3
    assert load_preferences(str(path), split="test")["prompt"].tolist() == ["p0", "p1", "p2"]


def test_table_hash_is_stable_and_content_sensitive(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", PAIRS)
    a, b = load_preferences(str(path)), load_preferences(str(path))
    assert table_sha256(a) == table_sha256(b) and len(table_sha256(a)) == 64
    b.loc[0, "chosen"] = "four"
    assert table_sha256(a) != table_sha256(b)


def test_summary_counts_distinct_prompts_and_responses(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "attribute": "x"},
            {"prompt": "p", "chosen": "b", "rejected": "a", "attribute": "y"},
            {"prompt": "q", "chosen": "a", "rejected": "c", "attribute": "x", "split": "test"}]
    s = summarize(load_preferences(str(write_jsonl(tmp_path / "s.jsonl", rows))))
    assert s["splits"] == {"train": {"pairs": 2, "attributes": {"x": 1, "y": 1}},
                           "test": {"pairs": 1, "attributes": {"x": 1}}}
    assert (s["distinct_prompts"], s["distinct_responses"], s["duplicates_dropped"]) == (2, 3, 0)
    assert s["sample"]["prompt"] == "p"
    json.dumps(s)  # JSON-ready
