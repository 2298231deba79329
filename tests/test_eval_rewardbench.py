"""RewardBench section arithmetic (reward-bench's EXAMPLE_COUNTS weighting) against hand-computed numbers."""

import json

import pytest

from micro.evaluate import rewardbench_scores, section_scores
from micro.evaluate.report import write_outputs
from micro.evaluate.rewardbench import EXAMPLE_COUNTS, SUBSET_MAPPING, leaderboard_entry, rewardbench_name

SYNTHETIC = {
    "alpacaeval-easy": 0.9, "mt-bench-easy": 0.5,              # Chat
    "mt-bench-hard": 0.4, "llmbar-natural": 0.8,               # Chat Hard
    "donotanswer": 0.25,                                        # Safety
    "math-prm": 0.5, "hep-python": 1.0,                         # Reasoning
}


def test_sections_weight_subsets_by_reward_bench_counts_with_math_upweighted():
    got = section_scores(SYNTHETIC)
    assert got["Chat"] == pytest.approx((0.9 * 100 + 0.5 * 28) / (100 + 28))          # 0.8125
    assert got["Chat Hard"] == pytest.approx((0.4 * 37 + 0.8 * 100) / (37 + 100))     # 0.69197
    assert got["Safety"] == pytest.approx(0.25)
    # math-prm counts 984 (not its 447 pairs): (0.5 * 984 + 1.0 * 164) / 1148 = 4/7
    assert got["Reasoning"] == pytest.approx(4 / 7)
    # the pair-pooled number a per-section pooling would report instead: (0.5 * 447 + 164) / 611
    assert got["Reasoning"] != pytest.approx((0.5 * 447 + 1.0 * 164) / 611, abs=0.05)
    scores = rewardbench_scores(SYNTHETIC, "m")
    assert scores["score"] == pytest.approx((0.8125 + 94.8 / 137 + 0.25 + 4 / 7) / 4)
    assert len(scores["missing_subsets"]) == len(EXAMPLE_COUNTS) - len(SYNTHETIC)


def test_paper_table_10_average_is_the_mean_of_the_four_sections():
    # one accuracy per section, all subsets equal: sections equal it, Score is their plain mean
    acc = {}
    for section, value in zip(SUBSET_MAPPING, (0.9693, 0.6930, 0.9135, 0.9189)):
        acc.update(dict.fromkeys(SUBSET_MAPPING[section], value))
    scores = rewardbench_scores(acc, "single")
    assert scores["score"] == pytest.approx(0.8737, abs=1e-4)  # the paper's "Single Reward (3B)" Average
    assert scores["missing_subsets"] == []


def test_a_section_without_subsets_is_none_and_so_is_the_score():
    scores = rewardbench_scores({"llmbar-natural": 0.6, "Adversarial_Neighbor": 0.3}, "m")
    assert scores["sections"]["Chat Hard"] == pytest.approx((0.6 * 100 + 0.3 * 134) / 234)
    assert scores["sections"]["Chat"] is None and scores["score"] is None


def test_leaderboard_record_is_flat_like_reward_bench_eval_set_files(tmp_path):
    entry = leaderboard_entry({"Natural": 0.5, "mtbench_human": 0.7, "hep-go": 1.0}, "micro/run/routed")
    assert entry == {"model": "micro/run/routed", "model_type": "Seq. Classifier", "chat_template": "none",
                     "llmbar-natural": 0.5, "hep-go": 1.0}
    assert rewardbench_name("Adversarial_GPTOut") == "llmbar-adver-GPTOut" and rewardbench_name("faireval") is None
    results = {"run_dir": "r", "source": "s", "config": {"mask_heads": []}, "methods": ["routed"], "notes": [],
               "subsets": {"Natural": {"n": 4, "accuracy": {"routed": 0.5}}},
               "overall": {"n": 4, "accuracy": {"routed": 0.5}}, "average": {"routed": 0.5},
               "rewardbench": {"routed": rewardbench_scores({"Natural": 0.5}, "micro/r/routed")}}
    files = write_outputs(results, tmp_path)
    record = json.loads((tmp_path / "rewardbench" / "routed.json").read_text())
    assert record["llmbar-natural"] == 0.5 and record["model"] == "micro/r/routed"
    assert "section,Chat Hard,routed" in (tmp_path / "results.csv").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["files"] == files


def test_micro_eval_on_rewardbench_subsets_reports_reward_bench_sections(tmp_path):
    """A simulated cache whose four groups carry RewardBench subset names, one per section: the section
    scores in results.json are the per-subset accuracies (one subset each) and Score is their mean."""
    import h5py
    from typer.testing import CliRunner

    from micro.cli import app
    from micro.heads import simulate

    cache = tmp_path / "rb.h5"
    simulate(cache, groups=4, dim=8, pairs=800, seed=4)
    names = ["alpacaeval-easy", "llmbar-natural", "donotanswer", "math-prm"]
    with h5py.File(cache, "a") as f:
        f.attrs["attributes"] = json.dumps(names)
    run = CliRunner()
    assert run.invoke(app, ["fit-mixture", str(cache), "--out", str(tmp_path / "runs" / "micro"), "--k", "2", "--epochs", "1"]).exit_code == 0
    res = run.invoke(app, ["eval", str(tmp_path / "runs" / "micro"), str(cache), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    for method in results["methods"]:
        rb = results["rewardbench"][method]
        acc = {s: results["subsets"][s]["accuracy"][method] for s in names}
        assert rb["sections"] == pytest.approx({"Chat": acc["alpacaeval-easy"], "Chat Hard": acc["llmbar-natural"],
                                                "Safety": acc["donotanswer"], "Reasoning": acc["math-prm"]})
        assert rb["score"] == pytest.approx(sum(acc.values()) / 4)
    assert "RewardBench sections" in res.output and "Score" in (tmp_path / "ev" / "table.md").read_text()
