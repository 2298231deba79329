"""Safe outputs: a lock per output, files and folders built beside their target and renamed into place.

Every command that writes goes through these helpers: fit-mixture and adapt (`writing_dir`), simulate, score
(`writing_file`), export (`writing_dir`), eval, audit, compare and the demo's own files (`output_files`);
embed takes the `lock` and renames its cache into place from its resumable parts folder; sweep-k holds
the `lock` of its folder. So

- a second writer of the same output is refused at once, naming the process that holds it (`lock`);
- an existing output is never replaced unless the caller says so (`refuse_existing`, the `--overwrite` flag),
  and is checked again at the commit: an output that appeared while the command ran is left alone;
- an output never is, contains or lies inside one of the command's own inputs (`refuse_overlap`), even
  with `--overwrite`;
- a killed command leaves the old output or nothing, never a half-written one: work happens in a hidden
  temporary sibling (`.NAME.tmp-PID-RANDOM`, unique per run) that is renamed into place on success
  (`atomic_dir`, `atomic_file`, `output_files` for files among others in a shared folder); leftovers of
  killed runs are hidden, never read as results, and removed by the next writer;
- temporary and lock files are created without following symbolic links, so a link planted in an output
  folder cannot redirect a write onto another file;
- file-system failures (read-only folder, full disk, a file where a folder belongs) become one
  `OutputError` naming the path, the problem and the fix.

This module imports nothing else of micro.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

#: Flags of every file micro creates beside an output: a new file, never through a symbolic link.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class OutputError(ValueError):
    """An output that cannot be written as asked; the message names the path, the problem and the fix."""


class OutputBusy(OutputError):
    """Another process is writing the same output."""


def _hidden(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}")


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output: a hidden sibling, so it survives the output being swapped."""
    return _hidden(Path(target), "lock")


def describe_os_error(exc: OSError, path: str | os.PathLike, what: str = "output") -> str:
    """One line for a failed write: the path, what went wrong and what to do about it."""
    code = exc.errno
    if code is None:  # HDF5 reports the system error inside its message text
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (exc.strerror or str(exc).strip().splitlines()[0])
    fix = {
        errno.ENOSPC: "free some space or choose another location",
        errno.EDQUOT: "free some space or choose another location",
        errno.EROFS: "the file system is read-only: choose a writable location",
        errno.EACCES: "choose a folder you may write to, or fix its permissions",
        errno.EPERM: "choose a folder you may write to, or fix its permissions",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
        errno.EISDIR: "a folder stands where a file is needed: choose another path",
    }.get(code, "check the path and try again")
    return f"cannot write {what} {path}: {reason}; {fix}."


def error_line(exc: BaseException, path: str | os.PathLike) -> str:
    """The one-line message of an error: a full disk or read-only folder while writing `path` is worded by
    `describe_os_error`; anything else keeps its own message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return describe_os_error(exc, exc.filename or path)
    return " ".join(str(exc).split())


@contextmanager
def os_errors(path: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Turn OSErrors raised inside the block into one OutputError line about `path`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path, what)) from None


@contextmanager
def lock(target: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Hold the lock of `target` for the block; refuse at once (OutputBusy) when another process holds it.

    The lock is an flock on the hidden `.NAME.lock` beside `target`, opened without following a symbolic
    link; it holds the pid of its holder, for the message. The OS drops it when the holder dies."""
    target = Path(target)
    path = lock_path(target)
    with os_errors(target.parent, "in the folder of"):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"the lock file {path} of {what} {target} is a symbolic link, which micro never makes: "
                                  "remove it (and check who can write to that folder), then rerun.") from None
            raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputBusy(
                f"{what} {target} is being written by another process (pid {pid}); wait for it to finish, "
                f"or stop it, then rerun."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_overlap(target: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], flag: str = "--out", *,
                   inside: bool = True) -> None:
    """Refuse an output that is, contains or (unless not `inside`) lies inside one of the command's own
    inputs, even with --overwrite: replacing it would destroy or change the input. Paths are compared after
    resolving links."""
    out = Path(target).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source:
            relation = "is"
        elif out in source.parents:
            relation = "contains"
        elif inside and source in out.parents:
            relation = "lies inside"
        else:
            continue
        raise OutputError(f"{flag} {target} {relation} the input {given}: writing there would change the command's own "
                          f"input, so it is refused even with --overwrite; choose another {flag}.")


def check_file_target(target: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a folder where an output file is wanted."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{flag} {target} is a folder, but a file is needed here: give a file path such as {target / 'cache.h5'}.")
    return target


def check_dir_target(target: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a file where an output folder is wanted."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{flag} {target} is a file, but a folder is needed here: give a folder path.")
    return target


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def refuse_existing(target: str | os.PathLike, what: str, differences: Iterable[str], flag: str = "--overwrite") -> None:
    """Raise OutputError: `target` exists; say what differs from the new output and how to replace it."""
    diffs = list(differences)
    if diffs:
        raise OutputError(
            f"{target} already holds {what}, which differs from this one in: {'; '.join(diffs)}. It is never "
            f"replaced silently: pass {flag} to replace it, or choose another path."
        )
    raise OutputError(f"{target} already holds {what} with the same settings; pass {flag} to redo it, or choose another path.")


def diff_fields(old: dict[str, Any], new: dict[str, Any], names: Iterable[str] | None = None, prefix: str = "") -> list[str]:
    """'name: old -> new' for each field whose value differs (all keys of both when `names` is None)."""
    names = list(names) if names is not None else sorted(set(old) | set(new))
    return [f"{prefix}{n}: {_short(old.get(n))} -> {_short(new.get(n))}" for n in names if old.get(n) != new.get(n)]


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TMP = re.compile(r"\.tmp-(?:old-)?(\d+)(?:-[0-9a-f]+)?$")


def remove_leftovers(target: Path) -> None:
    """Delete temporary siblings of `target` left by writers that no longer run (killed ones)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        found = _TMP.search(stale.name)
        if not found or _alive(int(found.group(1))):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def temp_sibling(target: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of `target` named for this process and a random suffix: unique per run."""
    return _hidden(target, f"{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _present(target: Path) -> bool:
    """`target` holds something: a file, a link, or a folder that is not empty."""
    return os.path.lexists(target) and not is_empty_dir(target)


def _refuse_appeared(target: Path, what: str) -> None:
    raise OutputError(f"{what} {target} appeared while this command ran and was left as it is; nothing was written: "
                      "rerun with --overwrite to replace it, or choose another path.")


@contextmanager
def atomic_file(target: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yield a new, empty temporary file beside `target`; on success it is fsynced and renamed onto `target`.

    The temporary file is created here (exclusively, not through a link) under a name unique to this run.
    An output that appeared while the block ran (absent at the start, present at the commit) is left alone
    and refused. A killed writer leaves only a hidden `.NAME.tmp-PID-RANDOM` file, which `remove_leftovers`
    deletes.
    """
    target = check_file_target(target)
    with os_errors(target, what):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        existed = os.path.lexists(target)
        tmp = temp_sibling(target)
        os.close(os.open(tmp, CREATE_FLAGS, 0o644))
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not existed and os.path.lexists(target):
                _refuse_appeared(target, what)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def atomic_dir(target: str | os.PathLike, *, keep: Iterable[str] = (), what: str = "output folder") -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    Call with the lock held and after deciding that `target` may be replaced. `keep` names entries of an
    existing `target` (caches its writer validates itself) copied into the new folder first. A `target` that
    was absent or empty at the start but holds something at the commit appeared during the run: it is left
    alone and refused. A killed writer leaves `target` as it was (or absent) plus a hidden temporary folder,
    removed next time.
    """
    target = check_dir_target(target)
    with os_errors(target, what):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        existed = _present(target)
        tmp = temp_sibling(target)
        tmp.mkdir()
        try:
            for name in keep:
                if (target / name).is_dir():
                    shutil.copytree(target / name, tmp / name)
            yield tmp
            if not existed and _present(target):
                _refuse_appeared(target, what)
            if os.path.lexists(target):
                old = temp_sibling(target, "tmp-old")  # a leftover to remove_leftovers if killed here
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def output_files(folder: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False, what: str = "output",
                 inputs: Iterable[str | os.PathLike | None] = (), flag: str = "--out") -> Iterator[Path]:
    """Write some files into a folder that may hold other things (a user's own files, a cache): yield an
    empty temporary folder; on success each file written into it (subfolders too) is renamed into `folder`.

    Under the folder's lock. Any of `names` already in `folder` is refused at the start unless `overwrite`,
    and every written file is checked again at the commit, so a file that is not ours (a user's results.csv)
    is never replaced without `overwrite`. Nothing else in `folder` is touched. A written file that is (or
    holds) one of `inputs` is refused even with `overwrite`.
    """
    folder = check_dir_target(folder, flag)
    with lock(folder, what):
        def check(rel: str | Path) -> None:
            refuse_overlap(folder / rel, inputs, flag, inside=False)  # a file beside a run's own files is fine
            if os.path.lexists(folder / rel) and not overwrite:
                raise OutputError(f"{folder / rel} already exists and is never replaced silently: pass --overwrite to "
                                  f"replace it, or choose another {flag}.")

        for name in names:
            check(name)
        with os_errors(folder, what):
            folder.mkdir(parents=True, exist_ok=True)
            remove_leftovers(folder)
            tmp = temp_sibling(folder)
            tmp.mkdir()
        try:
            yield tmp
            written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if not p.is_dir())
            for rel in written:
                check(rel)
            with os_errors(folder, what):
                for rel in written:
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / rel, folder / rel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _refuse_present(target: Path, what: str, flag: str) -> None:
    raise OutputError(f"{what} {target} already exists and is never replaced silently: pass --overwrite to "
                      f"replace it, or choose another {flag}.")


@contextmanager
def writing_dir(target: str | os.PathLike, *, overwrite: bool = False, what: str = "output folder",
                inputs: Iterable[str | os.PathLike | None] = (), flag: str = "--out", keep: Iterable[str] = (),
                existing: Callable[[], None] | None = None) -> Iterator[Path]:
    """The whole write of an output folder: refuse one that overlaps `inputs`; take its lock; refuse an
    existing (non-empty) one unless `overwrite`; yield a temporary folder that replaces it on success.

    `existing`, when given, is called instead of the plain refusal (under the lock, for an existing output
    without `overwrite`): it raises to refuse (naming what differs), or returns to let the write replace it.
    `keep` names entries of the old folder carried into the new one (see `atomic_dir`)."""
    target = check_dir_target(target, flag)
    refuse_overlap(target, inputs, flag)
    with lock(target, what):
        if _present(target) and not overwrite:
            (existing or (lambda: _refuse_present(target, what, flag)))()
        with atomic_dir(target, keep=keep, what=what) as tmp:
            yield tmp


@contextmanager
def writing_file(target: str | os.PathLike, *, overwrite: bool = False, what: str = "output",
                 inputs: Iterable[str | os.PathLike | None] = (), flag: str = "--out",
                 existing: Callable[[], None] | None = None) -> Iterator[Path]:
    """The whole write of an output file: as `writing_dir`, with a temporary file renamed onto `target`."""
    target = check_file_target(target, flag)
    refuse_overlap(target, inputs, flag)
    with lock(target, what):
        if os.path.lexists(target) and not overwrite:
            (existing or (lambda: _refuse_present(target, what, flag)))()
        with atomic_file(target, what=what) as tmp:
            yield tmp


def relocate(value: Any, old: Path, new: Path) -> Any:
    """`value` (JSON-like) with every string path under `old` rewritten to lie under `new`."""
    old_s, new_s = str(old), str(new)
    if isinstance(value, str):
        return new_s + value[len(old_s):] if value == old_s or value.startswith(old_s + os.sep) else value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocate(v, old, new) for v in value)
    return value


def free_bytes(path: str | os.PathLike) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(target: str | os.PathLike, needed: int, what: str = "output") -> None:
    """Refuse before writing when the file system cannot hold `needed` bytes (plus a small margin)."""
    free = free_bytes(Path(target).parent)
    margin = 1 << 20
    if free < needed + margin:
        raise OutputError(
            f"cannot write {what} {target}: it needs about {_mib(needed + margin)} but only {_mib(free)} is free; "
            "free some space or choose another location."
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"
