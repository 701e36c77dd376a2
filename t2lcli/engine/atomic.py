"""Kill-safe output: write into a hidden temporary sibling, then rename into place.

A folder is either absent, the previous version, or complete. `--force` swaps the old one out only after the new
one is fully written.

A process killed with SIGKILL leaves its hidden temporary (`.t2l-tmp-*`) behind. Each writer holds an exclusive
flock on its temporary while it writes (the kernel drops it when the process dies, whatever the signal), so the next
t2l process that writes into the same folder removes the temporaries nobody holds any more: the check works across
PID namespaces and, where the file system supports flock, across machines. Entries younger than a few seconds are
left alone (the instant between creating a temporary and locking it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from t2lcli.errors import OutputExistsError, T2LError

TMP_MARK = ".t2l-tmp-"
STALE_GRACE_S = 5.0
_swept: set[str] = set()  # folders already swept by this process


def clean_stale_temps(parent: Path | str, grace_s: float = STALE_GRACE_S) -> list[str]:
    """Remove `.t2l-tmp-*` entries in `parent` that no live process holds (left by a killed t2l). Returns their names.

    An entry is removed only when its flock can be taken (its writer is gone) and it is older than `grace_s`.
    Entries on file systems without flock, symlinks and anything unreadable are left alone.
    """
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(TMP_MARK)]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or now - st.st_mtime < grace_s:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if is_dir else 0))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live writer (or no flock here): keep it
                continue
            if is_dir:
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            removed.append(entry.name)
        finally:
            os.close(fd)
    if removed:
        from t2lcli.console import debug

        debug(f"removed {len(removed)} stale temporary file(s) of killed t2l processes in {parent}")
    return removed


def _sweep_once(parent: Path) -> None:
    key = os.path.abspath(parent)
    if key not in _swept:
        _swept.add(key)
        clean_stale_temps(parent)


def _hold(path: Path) -> int | None:
    """Open `path` and take its exclusive flock (released when the fd is closed or the process dies)."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # no flock on this file system: the temporary is simply never swept
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def check_output_free(target: Path, force: bool) -> None:
    """Refuse early when `target` exists and `force` is not set."""
    if target.exists() and not force:
        raise OutputExistsError(f"output already exists: {target}", hint="pass --force to replace it, or choose another -o")


@contextlib.contextmanager
def atomic_dir(target: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `target` atomically.

    Raises:
        OutputExistsError: `target` exists and `force` is False (nothing is touched).
    """
    target = Path(target)
    check_output_free(target, force)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise T2LError(f"cannot create output folder {parent}: {exc.strerror}") from None
    _sweep_once(parent)
    tmp = parent / f"{TMP_MARK}{target.name[:100]}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise T2LError(f"cannot write to {parent}: {exc.strerror}") from None
    held = _hold(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        _move_into_place(tmp, target, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _release(held)


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    """rename(tmp, target); with `force`, an existing target (even one another process renamed into place a moment
    ago) is swapped out first and then removed."""
    appeared = OutputExistsError(
        f"output appeared while writing: {target} (another process wrote it first)", hint="pass --force to replace it"
    )
    for _ in range(5):
        if target.exists():
            if not force:
                raise appeared
            old = target.parent / f"{TMP_MARK}old-{target.name[:100]}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.rename(target, old)
            except FileNotFoundError:  # another process swapped it out first: try again
                continue
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if not force:  # lost a race: someone created target between the check and the rename
                raise appeared from None
    raise appeared


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write a file via a temporary sibling + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    tmp = path.parent / f"{TMP_MARK}{path.name[:100]}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as fh:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration of the block; waits for other holders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
