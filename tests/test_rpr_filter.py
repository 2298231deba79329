"""The RPR recipe keeps the paper's 9 attributes (Tables 3 and 5) and drops every other category, with counts."""

import pandas as pd

from micro.data import load_preferences
from micro.data.recipes import RPR_PAPER_ATTRIBUTES

# Category spellings as an RPR-shaped file may hold them, each with the paper attribute it must map to.
KEPT = {"Clarity and Conciseness": "Clarity & Conciseness", "Creativity & Originality": "Creativity & Originality",
        "scientific rigor": "Scientific Rigor", "User-Friendliness": "User-Friendliness",
        "Narrative and Storytelling": "Narrative & Storytelling", "Pedagogical Effectiveness": "Pedagogical Effectiveness",
        "Linguistic Creativity": "Linguistic Creativity", "Factual Accuracy": "Factual Accuracy",
        "Humor and Entertainment": "Humor & Entertainment"}
DROPPED = ["Brevity", "Emotional Intelligence", "Technical Depth"]


def _row(i, x, y):
    return dict(prompt=f"p{i}", response_a=f"a{i}", response_b=f"b{i}", criteria_x=f"cx{i}", criteria_y=f"cy{i}",
                category_x=x, category_y=y)


def test_rpr_keeps_the_papers_nine_attributes_and_counts_what_it_drops(tmp_path):
    cats = list(KEPT) + DROPPED  # 12 categories; row i pairs category i with category i + 1
    rows = [_row(i, cats[i % len(cats)], cats[(i + 1) % len(cats)]) for i in range(24)]
    (tmp_path / "data").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    df = load_preferences("rpr", path=str(tmp_path))
    # 24 rows = 48 pairs; each of the 12 categories appears 4 times; the 3 outside the paper's 9 drop 12 pairs
    assert len(df) == 36
    assert set(df["attribute"]) == set(RPR_PAPER_ATTRIBUTES) == set(KEPT.values())
    assert df["attribute"].value_counts().to_dict() == {a: 4 for a in KEPT.values()}
    assert any("dropped 12 pairs of 3 categories outside the paper's 9 attributes" in w for w in df.attrs["warnings"])
    chosen = df[df["chosen"] == "a0"].iloc[0]
    assert (chosen["attribute"], chosen["context"]) == ("Clarity & Conciseness", "cx0")
