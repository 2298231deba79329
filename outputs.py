"""Safe outputs: a lock per output, files and folders built beside their target and renamed into place.

Every command that writes (embed, fit-mixture, adapt, simulate) goes through these helpers, so that

- a second writer of the same output is refused at once, naming the process that holds it (`lock`);
- an existing output is never replaced unless the caller says so (`refuse_existing`, the `--overwrite` flag);
- a killed command leaves the old output or nothing, never a half-written one: work happens in a hidden
  temporary sibling (`.NAME.tmp-PID`) that is renamed into place on success (`atomic_dir`, `atomic_file`);
  leftovers of killed runs are hidden, never read as results, and removed by the next writer;
- file-system failures (read-only folder, full disk, a file where a folder belongs) become one
  `OutputError` naming the path, the problem and the fix.

This module imports nothing else of micro.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from filelock import FileLock, Timeout


class OutputError(ValueError):
    """An output that cannot be written as asked; the message names the path, the problem and the fix."""


class OutputBusy(OutputError):
    """Another process is writing the same output."""


def _hidden(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}")


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output: a hidden sibling, so it survives the output being swapped."""
    return _hidden(Path(target), "lock")


def _owner_path(target: Path) -> Path:
    return _hidden(target, "lock.pid")


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
    """Hold the lock of `target` for the block; refuse at once (OutputBusy) when another process holds it."""
    target = Path(target)
    with os_errors(target.parent, "in the folder of"):
        target.parent.mkdir(parents=True, exist_ok=True)
        file_lock = FileLock(str(lock_path(target)), timeout=0)
        try:
            file_lock.acquire()
        except Timeout:
            holder = _owner_path(target)
            try:
                pid = holder.read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise OutputBusy(
                f"{what} {target} is being written by another process (pid {pid}); wait for it to finish, "
                f"or stop it, then rerun."
            ) from None
    try:
        try:
            _owner_path(target).write_text(str(os.getpid()))
        except OSError:
            pass  # the pid is only for messages
        yield
    finally:
        _owner_path(target).unlink(missing_ok=True)
        file_lock.release()


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


def remove_leftovers(target: Path) -> None:
    """Delete temporary siblings of `target` left by writers that no longer run (killed ones)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def temp_sibling(target: Path) -> Path:
    return _hidden(target, f"tmp-{os.getpid()}")


@contextmanager
def atomic_file(target: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed onto `target`.

    A killed writer leaves only a hidden `.NAME.tmp-PID` file, which `remove_leftovers` deletes.
    """
    target = check_file_target(target)
    with os_errors(target, what):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = temp_sibling(target)
        tmp.unlink(missing_ok=True)
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def atomic_dir(target: str | os.PathLike, *, keep: Iterable[str] = (), what: str = "output folder") -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    Call with the lock held and after deciding that `target` may be replaced. `keep` names entries of an
    existing `target` (caches its writer validates itself) copied into the new folder first. A killed
    writer leaves `target` as it was (or absent) plus a hidden `.NAME.tmp-PID` folder, removed next time.
    """
    target = check_dir_target(target)
    with os_errors(target, what):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = temp_sibling(target)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name in keep:
                if (target / name).is_dir():
                    shutil.copytree(target / name, tmp / name)
            yield tmp
            if target.exists():
                old = _hidden(target, f"tmp-old-{os.getpid()}")  # a leftover to remove_leftovers if killed here
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
