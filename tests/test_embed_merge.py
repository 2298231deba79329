"""The streamed merge: memory bounded by one window whatever the number of parts, a killed merge resumes,
and under torchrun a parts folder that some rank cannot see is refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from micro.embedcache.parts import STAGING, merge_parts, part_path, save_part
from micro.embedcache.plan import PROMPT, SEQ, Jobs, Plan

HIDDEN = 64
ROWS_PER_PART = 32


def synthetic_run(folder: Path, n_parts: int, seed: int = 0, write: bool = True, hidden: int = HIDDEN) -> tuple[Plan, dict]:
    """A plan of n_parts * ROWS_PER_PART sequences (+ their prompts), its parts in `folder` (rows in
    shuffled order) and the embeddings the merged cache must hold."""
    rng = np.random.default_rng(seed)
    n_seq = n_parts * ROWS_PER_PART
    n_prompts = max(n_seq // 4, 1)
    empty = np.zeros(0, dtype=np.int64)
    plan = Plan(
        jobs=Jobs(np.zeros(0, np.int32), np.zeros(1, np.int64), None, empty, empty, empty, empty),
        prompt_text=[f"prompt {i}" for i in range(n_prompts)],
        seq_prompt=np.arange(n_seq) % n_prompts, seq_text=[f"response {i}" for i in range(n_seq)], contexts=[],
        context_prompt_prompt=empty, context_prompt_context=empty, context_seq_context_prompt=empty, context_seq_text=[],
        pairs={"chosen": np.arange(0, n_seq, 2), "rejected": np.arange(1, n_seq, 2), "prompt": (np.arange(0, n_seq, 2) % n_prompts),
               "attribute": np.zeros(n_seq // 2, np.int64), "split": np.zeros(n_seq // 2, np.int64)},
        attributes=["a"], splits=["train"], context_in_sequence=False, stats={},
    )
    folder.mkdir(parents=True, exist_ok=True)
    seq_rows, prompt_rows = rng.permutation(n_seq), rng.permutation(n_prompts)
    expected = {SEQ: np.zeros((n_seq, hidden), np.float16), PROMPT: np.zeros((n_prompts, hidden), np.float16)}
    per_prompt = -(-n_prompts // n_parts)
    for b in range(n_parts):
        s = seq_rows[b * ROWS_PER_PART : (b + 1) * ROWS_PER_PART]
        p = prompt_rows[b * per_prompt : (b + 1) * per_prompt]
        emb = rng.standard_normal((len(s) + len(p), hidden)).astype(np.float16)
        expected[SEQ][s], expected[PROMPT][p] = emb[: len(s)], emb[len(s) :]
        group = np.concatenate([np.full(len(s), SEQ), np.full(len(p), PROMPT)]).astype(np.int8)
        if write:
            save_part(part_path(folder, b), group=group, row=np.concatenate([s, p]), embedding=emb)
    return plan, expected


META = {"model_id": "synthetic", "model_revision": "", "pooling": "last", "max_length": 8, "template": "none",
        "compute_dtype": "float32", "source_sha256": "x"}


def _merge(tmp: Path, n_parts: int, window: int) -> int:
    """Merge the parts already in tmp/c.h5.parts into tmp/c.h5."""
    plan, _ = synthetic_run(tmp / "c.h5.parts", n_parts, write=False)
    return merge_parts(tmp / "c.h5", tmp / "c.h5.parts", n_parts, plan, META, HIDDEN, "key", window_bytes=window)


def _check(tmp: Path, n_parts: int) -> None:
    _, expected = synthetic_run(tmp, n_parts, write=False)
    with h5py.File(tmp / "c.h5") as f:
        assert bool(f.attrs["complete"]) and "merged_batches" not in f.attrs
        np.testing.assert_array_equal(f["sequences/embedding"][()], expected[SEQ])
        np.testing.assert_array_equal(f["prompts/embedding"][()], expected[PROMPT])


def _peak_bytes(tmp: Path, n_parts: int) -> int:
    plan, _ = synthetic_run(tmp / "c.h5.parts", n_parts)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    merge_parts(tmp / "c.h5", tmp / "c.h5.parts", n_parts, plan, META, HIDDEN, "key", window_bytes=64 << 10)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def test_merge_memory_does_not_grow_with_the_number_of_parts(tmp_path):
    small = _peak_bytes(tmp_path / "small", 40)
    large = _peak_bytes(tmp_path / "large", 800)
    cache_bytes = 800 * ROWS_PER_PART * 1.25 * HIDDEN * 2  # the large cache's embeddings: 4 MiB
    assert large < cache_bytes / 4, (small, large)  # holding the embeddings would need >= cache_bytes
    assert large < 2 * small + (1 << 20), (small, large)
    _check(tmp_path / "large", 800)


_KILL = """
import sys
sys.path.insert(0, {here!r})
import runpy
m = runpy.run_path({test_file!r})
print("merged", m["_merge"](__import__("pathlib").Path(sys.argv[1]), int(sys.argv[2]), 8 << 10), flush=True)
"""


def test_a_killed_merge_resumes_where_it_stopped(tmp_path):
    n = 120
    synthetic_run(tmp_path / "c.h5.parts", n)
    code = _KILL.format(here=str(Path(__file__).parent), test_file=__file__)
    env = {**os.environ, "MICRO_EMBED_SLOW_TEST": "0.2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = tmp_path / "c.h5.parts" / STAGING
    deadline = time.time() + 60
    while time.time() < deadline and not staging.exists():
        time.sleep(0.05)
    time.sleep(1.5)  # a few windows in
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staging.exists() and not (tmp_path / "c.h5").exists()
    resumed = _merge(tmp_path, n, 8 << 10)
    assert 0 < resumed < n  # it went on from the last flushed window, not from the start
    _check(tmp_path, n)


def test_a_damaged_staging_file_is_started_over(tmp_path):
    n = 30
    synthetic_run(tmp_path / "c.h5.parts", n)
    (tmp_path / "c.h5.parts" / STAGING).write_bytes(b"not an hdf5 file")
    assert _merge(tmp_path, n, 8 << 10) == 0
    _check(tmp_path, n)


_RUN = """
import sys, pandas as pd
from micro.embedcache import embed_table, runner
if {blind_rank} >= 0 and __import__("os").environ["RANK"] == str({blind_rank}):
    runner._sees_run = lambda parts, token: False  # as if this node mounted another filesystem
table = pd.read_json(sys.argv[1], orient="records", lines=True)
embed_table(table, model=sys.argv[2], out=sys.argv[3], batch_tokens=96, progress=False, log=lambda *a, **k: None)
"""


@pytest.mark.slow
def test_torchrun_refuses_a_parts_folder_that_a_rank_cannot_see(tmp_path):
    import importlib.util

    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    spec = importlib.util.spec_from_file_location("_embed_fixtures", Path(__file__).with_name("test_embed.py"))
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    llama = fixtures.build_tiny_llama(tmp_path / "llama")
    data = tmp_path / "t.jsonl"
    fixtures.make_table(n_prompts=4, seed=1).to_json(data, orient="records", lines=True)
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(blind_rank=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(data), str(llama), str(tmp_path / "c.h5")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert "is not shared by every rank" in done.stderr and "filesystem that all nodes mount" in done.stderr
    assert not list((tmp_path / "c.h5.parts").glob("batch_*.npz"))  # refused before any batch ran
