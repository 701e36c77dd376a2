"""Kill-safe output: write into a hidden temporary sibling, then rename into place.

A folder is either absent, the previous version, or complete. `--force` swaps the old one out only after the new
one is fully written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from t2lcli.errors import OutputExistsError, T2LError

TMP_MARK = ".t2l-tmp-"


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
    tmp = parent / f"{TMP_MARK}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise T2LError(f"cannot write to {parent}: {exc.strerror}") from None
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if not force:
                raise OutputExistsError(
                    f"output appeared while writing: {target} (another process wrote it first)",
                    hint="pass --force to replace it",
                )
            old = parent / f"{TMP_MARK}old-{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError:
                # lost a race: someone created target between the check and the rename
                raise OutputExistsError(
                    f"output appeared while writing: {target} (another process wrote it first)",
                    hint="pass --force to replace it",
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write a file via a temporary sibling + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_MARK}{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as fh:
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
