"""Built-in recipes on the shared real data and on small files shaped like the hub datasets (served
offline from a `datasets` cache made in the test, the way `datasets` finds a dataset downloaded before)."""

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from micro.data import RECIPES, PreferenceDataError, load_preferences, summarize
from micro.data.recipes import HELPSTEER2_ATTRIBUTES, HELPSTEER2_CONTEXTS


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """fake_hub(repo_id) -> a folder to write the repo's files into; fake_hub.cache(repo_id) then puts the
    dataset into a fresh datasets cache as a download would, so that load_dataset(repo_id) finds it offline."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def repo(repo_id: str) -> Path:
        root = tmp_path / "hub" / repo_id
        root.mkdir(parents=True, exist_ok=True)
        (root / "README.md").write_text("# card, not data")
        return root

    def cache_it(repo_id: str) -> None:
        build = tmp_path / "build"
        builder = datasets.load_dataset_builder(str(tmp_path / "hub" / repo_id), cache_dir=str(build))
        builder.download_and_prepare()
        owner, name = repo_id.split("/")
        config_version_hash = Path(builder.cache_dir).relative_to(build / builder.dataset_name)
        shutil.copytree(builder.cache_dir, cache / f"{owner}___{camelcase_to_snakecase(name)}" / config_version_hash)
        shutil.rmtree(build)

    repo.cache = cache_it
    return repo


def write_jsonl_gz(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def write_parquet(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


# ---- HelpSteer2 ------------------------------------------------------------------------------------

def test_helpsteer2_subset_matches_the_paper_binarization_counts(shared_data):
    df = load_preferences("helpsteer2", path=str(shared_data / "helpsteer2_subset"))
    s = summarize(df)
    assert s["splits"]["train"]["pairs"] == 1217
    assert s["splits"]["test"]["pairs"] == 1309
    expected = {"helpfulness": (335, 359), "correctness": (309, 319), "coherence": (190, 219),
                "complexity": (130, 147), "verbosity": (253, 265)}
    for attribute, (train, test) in expected.items():
        assert s["splits"]["train"]["attributes"][attribute] == train, attribute
        assert s["splits"]["test"]["attributes"][attribute] == test, attribute
    assert s["duplicates_dropped"] == 0 and s["rows_dropped"] == 0
    assert all(df["context"] == df["attribute"].map(HELPSTEER2_CONTEXTS))


def test_helpsteer2_chosen_has_the_higher_rating_and_train_has_no_unanimous_pairs(shared_data):
    records = json.loads((shared_data / "helpsteer2_subset" / "train.json").read_text())
    ratings = {}
    for r in records:
        for response, labels in zip(r["responses"], r["labels"]):
            ratings[(r["prompt"], response)] = labels
    df = load_preferences("helpsteer2", path=str(shared_data / "helpsteer2_subset"), split="train")
    for row in df.itertuples():
        win, lose = ratings[(row.prompt, row.chosen)], ratings[(row.prompt, row.rejected)]
        assert win[row.attribute] > lose[row.attribute]
        assert not all(win[a] > lose[a] for a in HELPSTEER2_ATTRIBUTES)


def test_helpsteer2_contexts_are_the_papers_table_6():
    assert HELPSTEER2_CONTEXTS["correctness"] == (
        "The assistant must base responses on verified facts and cover all aspects of the prompt fully—avoiding "
        "errors, omissions, hallucinations, or irrelevant details.")
    assert HELPSTEER2_CONTEXTS["coherence"].startswith("The assistant's responses should be logically structured")
    assert set(HELPSTEER2_CONTEXTS) == set(HELPSTEER2_ATTRIBUTES)


def hs2_row(prompt, response, h, c, co, cx, v):
    return dict(prompt=prompt, response=response, helpfulness=h, correctness=c, coherence=co, complexity=cx, verbosity=v)


HS2_ROWS = [hs2_row("A?", "a1", 4, 4, 4, 2, 2), hs2_row("A?", "a2", 2, 2, 2, 1, 1),  # a1 wins everything
            hs2_row("B?", "b1", 3, 3, 4, 1, 2), hs2_row("B?", "b2", 2, 3, 4, 3, 2)]  # b1 helpful, b2 complex


def test_helpsteer2_from_the_hub_layout(fake_hub):
    root = fake_hub("nvidia/HelpSteer2")
    write_jsonl_gz(root / "train.jsonl.gz", HS2_ROWS)
    write_jsonl_gz(root / "validation.jsonl.gz", HS2_ROWS)
    write_jsonl_gz(root / "disagreements" / "disagreements.jsonl.gz", [{"other": 1}])  # not asked for
    fake_hub.cache("nvidia/HelpSteer2")
    df = load_preferences("helpsteer2")
    train = df[df["split"] == "train"]
    assert train[["chosen", "rejected", "attribute"]].values.tolist() == [["b1", "b2", "helpfulness"],
                                                                          ["b2", "b1", "complexity"]]
    test = df[df["split"] == "test"]  # the validation split is the test set; unanimous pairs stay
    assert len(test) == 7 and set(test[test["prompt"] == "A?"]["chosen"]) == {"a1"}


def test_helpsteer2_subset_layout_on_a_small_file(tmp_path):
    row = {"prompt": "Q", "responses": ["x", "y"],
           "labels": [{"helpfulness": 1.0, "correctness": 0.5, "coherence": 1.0, "complexity": 0.25, "verbosity": 0.5},
                      {"helpfulness": 0.75, "correctness": 0.75, "coherence": 1.0, "complexity": 0.25, "verbosity": 0.5}]}
    (tmp_path / "train.json").write_text(json.dumps([row]))
    df = load_preferences("helpsteer2", path=str(tmp_path))
    assert df[["chosen", "attribute", "split"]].values.tolist() == [["x", "helpfulness", "train"],
                                                                    ["y", "correctness", "train"]]


def test_helpsteer2_wrong_columns_are_reported(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"prompt": "p", "respnse": "r", "helpfulness": 1}]))
    with pytest.raises(PreferenceDataError, match="column 'response' not found.*did you mean 'respnse'.*helpsteer2"):
        load_preferences("helpsteer2", path=str(tmp_path))


# ---- RPR ---------------------------------------------------------------------------------------------

def rpr_row(i):
    return dict(prompt=f"p{i}", response_a=f"a{i}", response_b=f"b{i}", criteria_x=f"cx{i}", criteria_y=f"cy{i}",
                category_x="Clarity and Conciseness", category_y="Humor", id=i, scenario_x="s", scenario_y="s",
                **{f"profile_{k}": "" for k in range(5)})


def test_rpr_gives_two_pairs_per_row_with_criteria_as_context(fake_hub):
    root = fake_hub("microsoft/rpr")
    write_parquet(root / "data" / "train-00000-of-00001.parquet", [rpr_row(0), rpr_row(1)])
    write_parquet(root / "data" / "test-00000-of-00001.parquet", [rpr_row(2)])
    fake_hub.cache("microsoft/rpr")
    df = load_preferences("rpr")
    clarity, humor = "Clarity & Conciseness", "Humor & Entertainment"  # the paper's names of the two categories
    assert summarize(df)["splits"] == {"train": {"pairs": 4, "attributes": {clarity: 2, humor: 2}},
                                       "test": {"pairs": 2, "attributes": {clarity: 1, humor: 1}}}
    first, second = df.iloc[0], df.iloc[1]
    assert (first["chosen"], first["rejected"], first["context"], first["attribute"]) == ("a0", "b0", "cx0", clarity)
    assert (second["chosen"], second["rejected"], second["context"], second["attribute"]) == ("b0", "a0", "cy0", humor)


def test_rpr_local_file_missing_a_column(tmp_path):
    row = rpr_row(0)
    del row["criteria_y"]
    write_parquet(tmp_path / "train.parquet", [row])
    with pytest.raises(PreferenceDataError, match="column 'criteria_y' not found.*recipe 'rpr' expects"):
        load_preferences("rpr", path=str(tmp_path / "train.parquet"))


# ---- preference-700K, HH-RLHF, RewardBench, LLMBar ----------------------------------------------------

def test_preference_700k_conversations(fake_hub):
    root = fake_hub("hendrydong/preference_700K")
    user = {"role": "user", "content": "How do I boil an egg?"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Simmer it 8 minutes."}],
             "rejected": [user, {"role": "assistant", "content": "Microwave it."}]},
            {"chosen": [user, {"role": "assistant", "content": "x"}, user, {"role": "assistant", "content": "y"}],
             "rejected": [user, {"role": "assistant", "content": "x"}, user, {"role": "assistant", "content": "z"}]}]
    write_parquet(root / "train.parquet", rows)
    fake_hub.cache("hendrydong/preference_700K")
    df = load_preferences("preference-700k")
    assert df.iloc[0]["prompt"] == [user]
    assert (df.iloc[0]["chosen"], df.iloc[0]["rejected"]) == ("Simmer it 8 minutes.", "Microwave it.")
    assert len(df.iloc[1]["prompt"]) == 3 and df.iloc[1]["chosen"] == "y"
    assert set(df["split"]) == {"train"} and set(df["attribute"]) == {"default"}


HH_ROW = {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
          "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."}


def test_hh_rlhf_from_a_local_copy_of_the_hub_layout(tmp_path):
    root = tmp_path / "hh-rlhf"
    write_jsonl_gz(root / "harmless-base" / "train.jsonl.gz", [HH_ROW])
    write_jsonl_gz(root / "helpful-base" / "test.jsonl.gz", [HH_ROW])
    write_jsonl_gz(root / "red-team-attempts" / "red_team_attempts.jsonl.gz", [{"transcript": "x"}])  # other format
    df = load_preferences("hh-rlhf", path=str(root))
    assert df[["attribute", "split"]].values.tolist() == [["harmless", "train"], ["helpful", "test"]]
    assert df.iloc[0]["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]
    assert df.iloc[0]["chosen"] == "I can't help with that."


def test_hh_rlhf_shared_harmless_test_file(shared_data):
    df = load_preferences("hh-rlhf", path=str(shared_data / "hh_rlhf_harmless" / "test.jsonl.gz"))
    s = summarize(df)
    assert s["splits"] == {"test": {"pairs": 2303, "attributes": {"harmless": 2303}}}
    assert s["rows_dropped"] == 4  # 4 pairs whose final chosen reply is empty
    # 5 pairs whose two transcripts differ before the last assistant turn (no shared prompt)
    assert any(w.startswith("dropped 5 pairs whose prompt could not be split off") for w in s["warnings"])
    assert all(p[-1]["role"] == "user" for p in df["prompt"])
    assert not any("\n\nHuman:" in c for c in df["chosen"])


def test_rewardbench_subsets_and_sections(fake_hub):
    root = fake_hub("allenai/reward-bench")
    rows = [dict(prompt="p1", chosen="c", chosen_model="m", rejected="r", rejected_model="m", subset="mt-bench-hard", id=1),
            dict(prompt="p2", chosen="c", chosen_model="m", rejected="r", rejected_model="m", subset="hep-go", id=2)]
    write_parquet(root / "data" / "filtered-00000-of-00001.parquet", rows)
    write_parquet(root / "data" / "raw-00000-of-00001.parquet", rows * 3)  # not asked for
    fake_hub.cache("allenai/reward-bench")
    df = load_preferences("rewardbench")
    assert df[["attribute", "split"]].values.tolist() == [["mt-bench-hard", "test"], ["hep-go", "test"]]
    assert load_preferences("rewardbench-sections")["attribute"].tolist() == ["Chat Hard", "Reasoning"]


def test_llmbar_shared_files(shared_data):
    df = load_preferences("llmbar", path=str(shared_data / "llmbar"))
    s = summarize(df)
    assert set(s["splits"]) == {"test"}
    assert set(s["splits"]["test"]["attributes"]) == {"Natural", "Adversarial_Neighbor", "Adversarial_GPTInst",
                                                      "Adversarial_GPTOut", "Adversarial_Manual", "mtbench_human",
                                                      "llmeval2", "faireval"}
    assert s["splits"]["test"]["attributes"]["Natural"] == 100
    first = json.loads((shared_data / "llmbar" / "llmbar_Natural.json").read_text())[0]
    natural = df[df["attribute"] == "Natural"].iloc[0]
    assert natural["chosen"] == first[f"output_{first['label']}"]


def test_llmbar_label_preference_on_a_small_file(tmp_path):
    rows = [{"input": "i", "output_1": "one", "output_2": "two", "label": 2}]
    (tmp_path / "llmbar_Natural.json").write_text(json.dumps(rows))
    df = load_preferences("llmbar", path=str(tmp_path))
    assert df.iloc[0][["chosen", "rejected", "attribute", "split"]].tolist() == ["two", "one", "Natural", "test"]


# ---- hub ids, offline, options ---------------------------------------------------------------------

def test_a_hub_id_source_loads_its_data_files(fake_hub):
    root = fake_hub("someone/prefs")
    write_parquet(root / "data" / "train_prefs-00000-of-00001.parquet", [{"prompt": "p", "good": "a", "bad": "b"}] * 3)
    write_parquet(root / "data" / "test_prefs-00000-of-00001.parquet", [{"prompt": "q", "good": "c", "bad": "d"}])
    fake_hub.cache("someone/prefs")
    df = load_preferences("someone/prefs", chosen_key="good", rejected_key="bad")
    assert df[["chosen", "rejected", "split"]].values.tolist() == [["c", "d", "test_prefs"], ["a", "b", "train_prefs"]]
    assert df.attrs["duplicates_dropped"] == 2
    assert load_preferences("someone/prefs", split="test_prefs", chosen_key="good", rejected_key="bad")["chosen"].tolist() == ["c"]
    limited = load_preferences("someone/prefs", limit=1, chosen_key="good", rejected_key="bad")  # streamed
    assert limited["split"].tolist() == ["test_prefs", "train_prefs"] and limited.attrs["duplicates_dropped"] == 0


@pytest.mark.parametrize("source", ["helpsteer2", "rpr", "preference-700k", "hh-rlhf", "rewardbench", "owner/dataset"])
def test_offline_hub_names_the_id_and_how_to_pass_local_files(fake_hub, source):
    with pytest.raises(PreferenceDataError, match=r"could not load '[\w/.-]+' from the Hugging Face hub .*not in the "
                                                  r"local datasets cache.*save_to_disk.*--path"):
        load_preferences(source)


def test_llmbar_without_path_asks_for_one():
    with pytest.raises(PreferenceDataError, match="recipe 'llmbar' has no hub copy; pass --path"):
        load_preferences("llmbar")


def test_key_options_are_refused_for_recipes(tmp_path):
    with pytest.raises(PreferenceDataError, match="--chosen-key only apply to files and hub ids"):
        load_preferences("helpsteer2", path=str(tmp_path), chosen_key="good")


def test_demo_recipe_is_registered_and_loads():
    assert "demo" in RECIPES
    pytest.importorskip("micro.data.demo")
    df = load_preferences("demo")
    assert list(df.columns) == ["prompt", "chosen", "rejected", "attribute", "context", "split"] and len(df) > 0


def test_a_hub_split_downloads_only_that_splits_files(monkeypatch):
    """--split asks datasets for that split's data files only (load_dataset would download every split)."""
    import datasets

    calls = []
    files = {"train_prefs": ["hf://datasets/someone/prefs@abc123/data/train_prefs-00000-of-00001.parquet"],
             "test_prefs": ["hf://datasets/someone/prefs@abc123/data/test_prefs-00000-of-00001.parquet"]}
    builder = type("Builder", (), {"config": type("Config", (), {"data_files": files})()})()
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *args, **kwargs: builder)

    def load_dataset(path, name=None, **kwargs):
        calls.append(kwargs)
        return datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    df = load_preferences("someone/prefs", split="test_prefs")
    assert calls[0]["data_files"] == {"test_prefs": ["data/test_prefs-00000-of-00001.parquet"]}
    assert calls[0]["split"] == "test_prefs" and not calls[0]["streaming"]
    assert df["split"].tolist() == ["test_prefs"]
    load_preferences("someone/prefs", split="test_prefs", limit=5)  # streamed: no file list needed
    assert "data_files" not in calls[1] and calls[1]["streaming"]
