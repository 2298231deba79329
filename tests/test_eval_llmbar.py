"""`micro eval` end to end with the packaged MiniLM: a run trained on the demo data, evaluated on the
shared LLMBar files (RewardBench's Chat Hard subsets), with and without contexts, with an adapted router
and a mask, reusing the embedding cache."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from micro.cli import app
from micro.evaluate.rewardbench import EXAMPLE_COUNTS

SHARED_DATA = Path(os.environ.get("MICRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

pytestmark = pytest.mark.slow
ROWS = 6  # pairs kept from each LLMBar subset file


@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    run = CliRunner()
    cache = root / "demo.h5"
    res = run.invoke(app, ["embed", "demo", "--model", "minilm", "--out", str(cache), "--limit", "24"])
    assert res.exit_code == 0, res.output
    for method in ("micro", "single"):
        res = run.invoke(app, ["fit-mixture", str(cache), "--out", str(root / "runs" / method), "--method", method,
                               "--k", "3", "--epochs", "2"])
        assert res.exit_code == 0, res.output
    return root, cache


@pytest.fixture(scope="module")
def llmbar_small(tmp_path_factory):
    """The first rows of each shared LLMBar subset file (the `llmbar` recipe reads the folder)."""
    if not (SHARED_DATA / "llmbar").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set MICRO_SHARED_DATA)")
    folder = tmp_path_factory.mktemp("llmbar")
    for path in sorted((SHARED_DATA / "llmbar").glob("llmbar_*.json")):
        (folder / path.name).write_text(json.dumps(json.loads(path.read_text())[:ROWS]))
    return folder


def test_eval_on_llmbar_gives_rewardbench_chat_hard(minilm_runs, llmbar_small):
    root, _ = minilm_runs
    out, cache = root / "ev", root / "llmbar.h5"
    run = CliRunner()
    res = run.invoke(app, ["eval", str(root / "runs" / "micro"), "llmbar", "--path", str(llmbar_small),
                           "--out", str(out), "--cache", str(cache), "--limit", str(5 * ROWS)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["subsets"]) == {"Natural", "Adversarial_Neighbor", "Adversarial_GPTInst", "Adversarial_GPTOut", "Adversarial_Manual"}
    assert results["overall"]["n"] == 5 * ROWS
    assert {"single", "routed", "head-0", "head-1", "head-2"} == set(results["methods"])
    # the demo run's router reads (context + prompt); LLMBar has no context: routed on the prompt, with a note
    assert any("no context" in n for n in results["notes"])
    rb = results["rewardbench"]["routed"]
    acc = {k: v["accuracy"]["routed"] for k, v in results["subsets"].items()}
    names = {"Natural": "llmbar-natural", "Adversarial_Neighbor": "llmbar-adver-neighbor", "Adversarial_GPTInst": "llmbar-adver-GPTInst",
             "Adversarial_GPTOut": "llmbar-adver-GPTOut", "Adversarial_Manual": "llmbar-adver-manual"}
    weighted = sum(acc[s] * EXAMPLE_COUNTS[names[s]] for s in acc) / sum(EXAMPLE_COUNTS[n] for n in names.values())
    assert rb["sections"]["Chat Hard"] == pytest.approx(weighted)
    assert rb["sections"]["Chat"] is None and rb["score"] is None and "mt-bench-hard" in rb["missing_subsets"]
    record = json.loads((out / "rewardbench" / "routed.json").read_text())
    assert record["llmbar-natural"] == acc["Natural"] and record["model"].endswith("/routed")
    assert "Chat Hard" in res.output and (out / "table.md").exists() and (out / "results.csv").exists()

    # the same source again: the cache is complete, nothing is embedded; an existing result needs --overwrite
    again = run.invoke(app, ["eval", str(root / "runs" / "micro"), "llmbar", "--path", str(llmbar_small),
                             "--out", str(out), "--cache", str(cache), "--overwrite"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    refused = run.invoke(app, ["eval", str(root / "runs" / "micro"), "llmbar", "--path", str(llmbar_small), "--out", str(out)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_eval_with_an_adapted_router_context_and_mask(minilm_runs, llmbar_small):
    root, demo_cache = minilm_runs
    run = CliRunner()
    adapt = root / "adapt"
    res = run.invoke(app, ["adapt", str(demo_cache), str(root / "runs" / "micro"), "--out", str(adapt), "--budget", "3",
                           "--seeds", "1", "--no-baselines", "--mask-heads", "1", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    adapted = json.loads((adapt / "results.json").read_text())
    assert adapted["config"]["mask_heads"] == [1]
    router = adapt / "routers" / "b3_s0.safetensors"
    assert json.loads(router.with_suffix(".json").read_text())["masked_heads"] == [1]

    out = root / "ev-adapted"
    res = run.invoke(app, ["eval", str(root / "runs" / "micro"), "llmbar", "--path", str(llmbar_small), "--out", str(out),
                           "--cache", str(root / "llmbar-ctx.h5"), "--router", str(router), "--attribute", "busy-professional"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert "adapted" in results["methods"] and results["config"]["mask_heads"] == [1]
    assert results["config"]["context"] and not results["notes"]  # every pair now has the context
    # the adapted user is micro as `micro adapt` scored it: the router times busy-professional's Hedge weights
    from micro.evaluate.source import load_pairs
    from micro.router import load_adapted

    split = load_pairs(root / "llmbar-ctx.h5")
    margins = load_adapted(root / "runs" / "micro", router, attribute="busy-professional", refined=False).margins(split.diff, split.context_inputs())
    assert results["overall"]["accuracy"]["adapted"] == pytest.approx(float((margins > 0).float().mean()))
    assert results["config"]["attribute_hedge_weights"] is True
    assert "embedded" in res.output

    no_ctx = run.invoke(app, ["eval", str(root / "runs" / "micro"), "llmbar", "--path", str(llmbar_small),
                              "--out", str(root / "ev-x"), "--cache", str(root / "llmbar-x.h5"), "--router", str(router)])
    assert no_ctx.exit_code == 2 and "--context" in no_ctx.output
