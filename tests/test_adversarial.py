"""Adversarial table: every command against each class of hostile or careless input and output (missing,
empty, corrupt, foreign, NaN, symlinked, read-only, concurrent, self-overlapping). Each row must end with
exit 2, one `error:` line naming the problem, no traceback, and no file changed.

A row is (name, command, needle): `command(w, tmp)` builds the situation in its own folder `tmp` (from
the shared world `w`: a simulated cache, a run fitted on it, a small JSONL) and returns the arguments.
A new command or attack joins the table by one line.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import h5py
import pytest
import torch
from safetensors.torch import load_file, save_file

from micro.cli import main

FIT = ["--k", "2", "--epochs", "1"]
ADAPT = ["--seeds", "1", "--no-baselines"]
ROWS = '{"prompt": "p%d", "chosen": "good", "rejected": "bad"}\n'


def _cli(args, capsys, monkeypatch):
    """(exit code, stderr) of `micro ARGS` run through the real entry point (its error handling included)."""
    monkeypatch.setattr(sys, "argv", ["micro", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    for args in (["simulate", "--out", root / "c.h5", "--pairs", "300", "--dim", "8"],
                 ["fit-mixture", root / "c.h5", "--out", root / "run", *FIT]):
        proc = subprocess.run([sys.executable, "-m", "micro.cli", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    (root / "data.jsonl").write_text("".join(ROWS % i for i in range(4)))
    return root


# ---- building blocks of the rows --------------------------------------------------------------------
def cache(w, tmp, name="c.h5"):
    shutil.copy(w / "c.h5", tmp / name)
    return tmp / name


def run(w, tmp, name="run"):
    shutil.copytree(w / "run", tmp / name)
    return tmp / name


def data(w, tmp, name="data.jsonl"):
    shutil.copy(w / "data.jsonl", tmp / name)
    return tmp / name


def victim(tmp):
    (tmp / "victim.txt").write_text("precious")
    return tmp / "victim.txt"


def planted_lock(tmp, out):
    """A `.OUT.lock` symbolic link planted by someone who can write to the folder."""
    (tmp / f".{out}.lock").symlink_to(victim(tmp))
    return tmp / out


def damaged(w, tmp, edit):
    path = cache(w, tmp)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def nan_run(w, tmp):
    path = run(w, tmp)
    state = load_file(str(path / "model.safetensors"))
    state["heads"] = state["heads"].clone()
    state["heads"][0, 0] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    return path


def with_files(tmp, name, files):
    folder = tmp / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


def read_only(tmp, name="ro"):
    folder = tmp / name
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _hold(target):
    """A process that holds the lock of `target` (a concurrent writer); returns it once the lock is taken."""
    code = f"from micro.outputs import lock\nimport time\nwith lock({str(target)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- the table: (name, command, needle) ---------------------------------------------------------------
TABLE = [
    # missing, empty, corrupt inputs
    ("fit-mixture, missing cache", lambda w, t: ["fit-mixture", t / "none.h5", "--out", t / "r"], "does not exist"),
    ("fit-mixture, empty cache", lambda w, t: ["fit-mixture", (t / "e.h5", (t / "e.h5").write_bytes(b""))[0], "--out", t / "r"], "not a readable HDF5"),
    ("fit-mixture, pair index out of range", lambda w, t: ["fit-mixture", damaged(w, t, lambda f: f["pairs/chosen"].__setitem__(3, 10**6)), "--out", t / "r", *FIT], "/pairs/chosen of pair 3"),
    ("fit-mixture, attribute index out of range", lambda w, t: ["fit-mixture", damaged(w, t, lambda f: f["pairs/attribute"].__setitem__(0, 7)), "--out", t / "r", *FIT], "/pairs/attribute of pair 0"),
    ("fit-mixture, wrong hidden_size attribute", lambda w, t: ["fit-mixture", damaged(w, t, lambda f: f.attrs.__setitem__("hidden_size", 9)), "--out", t / "r", *FIT], "declares hidden_size 9"),
    ("fit-mixture, K larger than the training pairs", lambda w, t: ["fit-mixture", cache(w, t), "--out", t / "r", "--k", "5000", "--epochs", "1"], "--k 5000 is more than the"),
    ("adapt, NaN in the run's weights", lambda w, t: ["adapt", cache(w, t), nan_run(w, t), "--out", t / "a", *ADAPT], "NaN or infinite"),
    ("eval, NaN in the run's weights", lambda w, t: ["eval", nan_run(w, t), cache(w, t), "--out", t / "e"], "NaN or infinite"),
    ("adapt, a cache of another max length", lambda w, t: ["adapt", damaged(w, t, lambda f: f.attrs.__setitem__("max_length", 64)), run(w, t), "--out", t / "a", *ADAPT], "max_length 64, but the run's training cache with max_length 0"),
    ("adapt, an eval cache of another max length", lambda w, t: ["adapt", cache(w, t, "own.h5"), run(w, t), "--eval-cache", damaged(w, t, lambda f: f.attrs.__setitem__("max_length", 64)), "--out", t / "a", *ADAPT], "max_length 64"),
    ("eval, a cache of another max length", lambda w, t: ["eval", run(w, t), damaged(w, t, lambda f: f.attrs.__setitem__("max_length", 64)), "--out", t / "e"], "max_length 64"),
    ("data, malformed JSON row", lambda w, t: ["data", "preview", (t / "b.jsonl", (t / "b.jsonl").write_text(ROWS % 1 + ROWS % 2 + "{oops\n"))[0]], "row 3 is not valid JSON"),
    ("data, non-UTF-8 row", lambda w, t: ["data", "preview", (t / "b.jsonl", (t / "b.jsonl").write_bytes((ROWS % 1).encode() + b'{"prompt": "\xff"}\n'))[0]], "row 2 is not UTF-8"),
    ("embed, a model folder with only a pickle", lambda w, t: ["embed", data(w, t), "--model", with_files(t, "m", {"config.json": '{"model_type": "bert"}', "pytorch_model.bin": "pickle"}), "--out", t / "e.h5"], "safetensors only"),
    # existing and foreign outputs
    ("fit-mixture, existing run", lambda w, t: ["fit-mixture", cache(w, t), "--out", run(w, t), *FIT], "--overwrite"),
    ("simulate, a foreign file", lambda w, t: ["simulate", "--out", victim(t), "--pairs", "300", "--dim", "8"], "did not write"),
    ("score, existing output", lambda w, t: ["score", run(w, t), data(w, t), "--out", victim(t)], "--overwrite"),
    ("score, a folder as output (--overwrite)", lambda w, t: ["score", run(w, t), data(w, t), "--out", with_files(t, "d", {"x": "1"}), "--overwrite"], "is a folder"),
    ("export, existing output", lambda w, t: ["export", run(w, t), "--out", with_files(t, "x", {"model": "mine"})], "--overwrite"),
    ("eval, a user's results.csv", lambda w, t: ["eval", run(w, t), cache(w, t), "--out", with_files(t, "e", {"results.csv": "mine", "table.md": "mine"})], "results.csv exists"),
    ("audit, existing audit.json", lambda w, t: ["audit", run(w, t), cache(w, t), "--out", with_files(t, "au", {"audit.json": "{}"})], "--overwrite"),
    # outputs that are, contain or lie inside an input
    ("fit-mixture, --out holds the cache", lambda w, t: ["fit-mixture", cache(w, t), "--out", t, "--overwrite", *FIT], "contains the input"),
    ("adapt, --out is the stage-1 run", lambda w, t: ["adapt", cache(w, t), run(w, t), "--out", t / "run", "--overwrite", *ADAPT], "is the input"),
    ("adapt, --out inside the stage-1 run", lambda w, t: ["adapt", cache(w, t), run(w, t), "--out", t / "run" / "adapt", *ADAPT], "lies inside the input"),
    ("embed, --out is the source data", lambda w, t: ["embed", data(w, t), "--out", t / "data.jsonl", "--overwrite"], "is the input"),
    ("score, --out is the source data", lambda w, t: ["score", run(w, t), data(w, t), "--out", t / "data.jsonl", "--overwrite"], "is the input"),
    ("export, --out is the run", lambda w, t: ["export", run(w, t), "--out", t / "run", "--overwrite"], "is the input"),
    # symbolic links planted beside an output
    ("fit-mixture, planted lock link", lambda w, t: ["fit-mixture", cache(w, t), "--out", planted_lock(t, "r"), *FIT], "symbolic link"),
    ("adapt, planted lock link", lambda w, t: ["adapt", cache(w, t), run(w, t), "--out", planted_lock(t, "a"), *ADAPT], "symbolic link"),
    ("simulate, planted lock link", lambda w, t: ["simulate", "--out", planted_lock(t, "s.h5"), "--pairs", "300", "--dim", "8"], "symbolic link"),
    ("embed, planted lock link", lambda w, t: ["embed", data(w, t), "--out", planted_lock(t, "e.h5")], "symbolic link"),
    ("score, planted lock link", lambda w, t: ["score", run(w, t), data(w, t), "--out", planted_lock(t, "s.jsonl")], "symbolic link"),
    ("export, planted lock link", lambda w, t: ["export", run(w, t), "--out", planted_lock(t, "x")], "symbolic link"),
    ("eval, planted lock link", lambda w, t: ["eval", run(w, t), cache(w, t), "--out", planted_lock(t, "e")], "symbolic link"),
    # a file where a folder is needed, a read-only folder
    ("score, a file where the folder is", lambda w, t: ["score", run(w, t), data(w, t), "--out", victim(t) / "s.jsonl"], "cannot write"),
    ("export, a file as output", lambda w, t: ["export", run(w, t), "--out", victim(t)], "is a file"),
    ("score, read-only folder", lambda w, t: ["score", run(w, t), data(w, t), "--out", read_only(t) / "s.jsonl"], "cannot write"),
    ("export, read-only folder", lambda w, t: ["export", run(w, t), "--out", read_only(t) / "x"], "cannot write"),
]
TABLE = [pytest.param(*row, id=row[0], marks=[pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")]
                      if "read-only" in row[0] else []) for row in TABLE]


def _snapshot(folder):
    """Every file and link under `folder` (lock files aside: they are the commands' own) with its content."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".lock") and not path.is_symlink():
            continue
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            seen[rel] = "link -> " + os.readlink(path)
        elif path.is_file():
            seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            seen[rel] = "folder"
    return seen


@pytest.mark.parametrize("name, command, needle", TABLE)
def test_refused_in_one_line_with_nothing_changed(w, tmp_path, capsys, monkeypatch, name, command, needle):
    args = command(w, tmp_path)
    before = _snapshot(tmp_path)
    code, err = _cli(args, capsys, monkeypatch)
    for folder in tmp_path.rglob("*"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    lines = [line for line in err.strip().splitlines() if not line.startswith(("note:", "warning:"))]
    assert code == 2, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, err)
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before, name


#: (name, command, output): a second run into an output another process is writing; one line per command.
CONCURRENT = [
    ("fit-mixture", lambda w, t: ["fit-mixture", cache(w, t), "--out", t / "r", *FIT], "r"),
    ("adapt", lambda w, t: ["adapt", cache(w, t), run(w, t), "--out", t / "a", *ADAPT], "a"),
    ("simulate", lambda w, t: ["simulate", "--out", t / "s.h5", "--pairs", "300", "--dim", "8"], "s.h5"),
    ("embed", lambda w, t: ["embed", data(w, t), "--out", t / "e.h5"], "e.h5"),
    ("score", lambda w, t: ["score", run(w, t), data(w, t), "--out", t / "s.jsonl"], "s.jsonl"),
    ("export", lambda w, t: ["export", run(w, t), "--out", t / "x"], "x"),
    ("eval", lambda w, t: ["eval", run(w, t), cache(w, t), "--out", t / "e"], "e"),
    ("audit", lambda w, t: ["audit", run(w, t), cache(w, t), "--out", t / "au"], "au"),
    ("sweep-k", lambda w, t: ["sweep-k", cache(w, t), "--out", t / "k", "--k", "2", "--epochs", "1"], "k"),
]


@pytest.mark.parametrize("name, command, out", CONCURRENT, ids=[row[0] for row in CONCURRENT])
def test_a_concurrent_writer_is_refused_naming_its_pid(w, tmp_path, capsys, monkeypatch, name, command, out):
    args, out = command(w, tmp_path), tmp_path / out
    holder = _hold(out)
    try:
        code, err = _cli(args, capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (name, err)
    assert f"being written by another process (pid {holder.pid})" in errors[0], (name, err)
    assert not out.exists(), name


def test_a_planted_pid_link_is_not_written_through(w, tmp_path, capsys, monkeypatch):
    target = victim(tmp_path)
    (tmp_path / ".r.lock.pid").symlink_to(target)
    code, err = _cli(["fit-mixture", cache(w, tmp_path), "--out", tmp_path / "r", *FIT], capsys, monkeypatch)
    assert code == 0, err
    assert target.read_text() == "precious"
