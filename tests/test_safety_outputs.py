"""micro.outputs: one writer per output, folders and files swapped in whole, leftovers never read as results."""

import os
import subprocess
import sys

import pytest

from micro.outputs import (
    OutputBusy,
    OutputError,
    atomic_dir,
    atomic_file,
    describe_os_error,
    lock,
    lock_path,
    refuse_existing,
    relocate,
)


def _hold_lock(target, seconds=60):
    """A subprocess holding the lock of `target`; returns once the lock is taken."""
    code = f"from micro.outputs import lock\nimport time\nwith lock({str(target)!r}):\n    print('held', flush=True)\n    time.sleep({seconds})\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
    target = tmp_path / "run"
    holder = _hold_lock(target)
    try:
        with pytest.raises(OutputBusy, match=rf"being written by another process \(pid {holder.pid}\)"):
            with lock(target, "run folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with lock(target):  # a killed holder frees the lock (the OS drops it with the process)
        assert lock_path(target).exists()


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.png").write_text("old figure")
    (target / "results.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "results.json").write_text("half")
            raise RuntimeError("killed halfway")
    assert sorted(p.name for p in target.iterdir()) == ["results.json", "stale.png"]
    assert (target / "results.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind

    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        (tmp / "results.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["results.json"]  # the stale figure is gone
    assert (target / "results.json").read_text() == "new"


def test_atomic_dir_keeps_named_caches(tmp_path):
    target = tmp_path / "out"
    (target / "baselines" / "single").mkdir(parents=True)
    (target / "baselines" / "single" / "config.json").write_text("{}")
    (target / "routers").mkdir()
    with atomic_dir(target, keep=("baselines",)) as tmp:
        assert (tmp / "baselines" / "single" / "config.json").exists() and not (tmp / "routers").exists()


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{dead_pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a running process: its work is left alone
    live.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("a")
    assert not stale.exists() and live.exists()
    assert (target / "a").exists()


def test_atomic_file_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "c.h5"
    target.write_text("old cache")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError
    assert target.read_text() == "old cache" and sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    with atomic_file(target) as tmp:
        tmp.write_text("new cache")
    assert target.read_text() == "new cache"


def test_wrong_kinds_and_refusals_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, but a folder is needed"):
        with atomic_dir(tmp_path / "file"):
            pass
    with pytest.raises(OutputError, match="is a folder, but a file is needed"):
        with atomic_file(tmp_path):
            pass
    with pytest.raises(OutputError, match=r"differs from this one in: k: 3 -> 4\. .*pass --overwrite"):
        refuse_existing(tmp_path, "a run", ["k: 3 -> 4"])
    message = describe_os_error(OSError(28, "No space left on device"), tmp_path / "x")
    assert "No space left on device" in message and "free some space" in message and "\n" not in message
    hdf5_style = OSError("Can't close file (file write failed: time = Sat\n, errno = 28, error message = 'No space')")
    assert "No space left on device" in describe_os_error(hdf5_style, "c.h5")


def test_relocate_rewrites_only_paths_under_the_temporary_folder(tmp_path):
    tmp, final = tmp_path / ".out.tmp-1", tmp_path / "out"
    value = {"files": {"a": str(tmp / "a.json"), "same": str(tmp)}, "cache": str(tmp_path / "c.h5"), "n": [1, str(tmp / "r")]}
    assert relocate(value, tmp, final) == {
        "files": {"a": str(final / "a.json"), "same": str(final)}, "cache": str(tmp_path / "c.h5"), "n": [1, str(final / "r")]
    }
    assert relocate(str(tmp_path / ".out.tmp-10" / "x"), tmp, final) == str(tmp_path / ".out.tmp-10" / "x")


# ------------------------------------------------------------------------------------------------
# unique temporary names, no symbolic links followed, existence checked again at the commit
# ------------------------------------------------------------------------------------------------
def test_temporary_names_are_unique_per_run_and_never_fixed(tmp_path):
    target = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.tmp").write_text("the user's own file")
    with atomic_file(target) as first, atomic_file(tmp_path / "other") as second:
        assert first.name.startswith(".out.jsonl.tmp-") and first.parent == tmp_path and first.exists()
        names = {first.name}
        first.write_text("new")
    with atomic_file(target, what="scores") as again:
        assert again.name not in names
        again.write_text("newer")
    assert (tmp_path / "out.jsonl.tmp").read_text() == "the user's own file"


def test_a_planted_lock_link_is_refused_and_its_target_unchanged(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.lock").symlink_to(victim)
    with pytest.raises(OutputError, match="is a symbolic link"):
        with lock(tmp_path / "out"):
            pass
    assert victim.read_text() == "precious"


def test_a_planted_pid_link_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.lock.pid").symlink_to(victim)
    with lock(tmp_path / "out"):
        pass
    assert victim.read_text() == "precious"


def test_an_output_that_appears_during_the_run_is_left_alone(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(OutputError, match="appeared while this command ran"):
        with atomic_file(target) as tmp:
            tmp.write_text("ours")
            target.write_text("someone else's")
    assert target.read_text() == "someone else's" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    folder = tmp_path / "run"
    with pytest.raises(OutputError, match="appeared while this command ran"):
        with atomic_dir(folder) as tmp:
            (tmp / "model.safetensors").write_text("ours")
            folder.mkdir()
            (folder / "notes.txt").write_text("someone else's")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_output_files_never_touch_a_foreign_file_without_overwrite(tmp_path):
    from micro.outputs import output_files

    (tmp_path / "results.csv").write_text("the user's table")
    (tmp_path / "notes.md").write_text("kept")
    with pytest.raises(OutputError, match="results.csv already exists.*--overwrite"):
        with output_files(tmp_path, ["results.json", "results.csv"]):
            pass
    with pytest.raises(OutputError, match="results.csv already exists"):  # a file not named up front: caught at the commit
        with output_files(tmp_path, ["results.json"]) as tmp:
            (tmp / "results.json").write_text("{}")
            (tmp / "results.csv").write_text("ours")
    assert (tmp_path / "results.csv").read_text() == "the user's table" and not (tmp_path / "results.json").exists()
    with output_files(tmp_path, ["results.json", "results.csv"], overwrite=True) as tmp:
        (tmp / "results.json").write_text("{}")
        (tmp / "results.csv").write_text("ours")
    assert (tmp_path / "results.csv").read_text() == "ours" and (tmp_path / "notes.md").read_text() == "kept"
    assert not [p for p in tmp_path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("out, relation", [("d/c.h5", "is"), ("d", "contains"), ("run/adapt", "lies inside")])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, out, relation):
    from micro.outputs import refuse_overlap

    (tmp_path / "d").mkdir()
    (tmp_path / "run").mkdir()
    with pytest.raises(OutputError, match=rf"--out \S+ {relation} the input .* refused even with --overwrite"):
        refuse_overlap(tmp_path / out, [tmp_path / "d" / "c.h5", None, tmp_path / "run"])
    refuse_overlap(tmp_path / "elsewhere", [tmp_path / "d" / "c.h5", tmp_path / "run"])
