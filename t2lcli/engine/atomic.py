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
from typing import Any

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


# What each t2l writer leaves in its output. A folder holding one of these at its top level is a previous t2l output,
# which `--force` may replace; anything else (a user's folder, a regular file) is refused with or without `--force`.
# name -> (what it is, folders that kind may hold (None: any), a check of the file's JSON (None: its presence suffices))
MARKERS: dict[str, tuple[str, frozenset[str] | None, Any]] = {
    "t2l_adapter.json": ("a t2l adapter", frozenset(), None),  # generate, merge (adapters, --export)
    "t2l_config.json": ("a t2l checkpoint", frozenset(), None),  # convert, train's final/ and step-*/
    "t2l_merge.json": ("a t2l merged model", frozenset(), None),  # merge --into-base
    "run.json": ("a t2l training run", None, lambda d: isinstance(d, dict) and "fingerprint" in d and "recipe" in d),  # train
    "results.json": ("t2l eval results", frozenset({"samples"}), lambda d: isinstance(d, dict) and d.get("format") == "t2l-eval-results"),  # eval
}
EMPTY = "an empty folder"
REPORT_SCHEMA_PREFIX = "t2l-bench"  # a `t2l bench --output` report (a file): t2l-bench/1, t2l-bench-plan/1


def _json_of(path: Path, limit: int = 64 << 20) -> Any:
    try:
        if path.stat().st_size > limit:
            return None
        import json

        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _entries(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if not e.name.startswith(TMP_MARK)), key=lambda e: e.name)


def _listing(entries: list[os.DirEntry], limit: int = 4) -> str:
    names = [e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries]
    more = f", … ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def t2l_output_kind(path: Path | str) -> str | None:
    """What previous t2l output `path` is ("a t2l adapter", …), or None when t2l did not write it (or it is absent)."""
    return _inspect_output(Path(path))[0]


def _inspect_output(path: Path) -> tuple[str | None, str | None]:
    """(kind, problem): the t2l output kind of a folder, and why `--force` must not replace it (None: it may)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = "a symbolic link" if path.is_symlink() else "a file"
        return None, f"{path} is {what}, not an output folder t2l wrote; t2l replaces only its own output folders"
    try:
        entries = _entries(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    if not entries:
        return EMPTY, None
    names = {e.name for e in entries}
    for marker, (kind, dirs, check) in MARKERS.items():
        if marker not in names or not (path / marker).is_file():
            continue
        if check is not None and not check(_json_of(path / marker)):
            continue
        if dirs is not None:
            extra = [e for e in entries if e.is_dir(follow_symlinks=False) and e.name not in dirs]
            if extra:
                return kind, (f"{path} is {kind} but also holds folders t2l did not write there ({_listing(extra)}); "
                              "--force would delete them")
        return kind, None
    return None, f"{path} holds files t2l did not write ({_listing(entries)}); --force replaces only a previous t2l output"


def check_output_free(target: Path | str, force: bool, replaces: tuple[str, ...] | None = None) -> None:
    """Refuse early unless `target` is absent, or `force` is set and `target` is a previous t2l output (the one rule
    every writer follows: see MARKERS). `replaces` narrows the kinds of t2l output this writer may replace.

    Raises:
        OutputExistsError: `target` exists (nothing is touched). The hint offers `--force` only where it would work.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    kind, problem = _inspect_output(target)
    if problem is None and replaces is not None and kind not in replaces:
        problem = f"{target} is {kind}; this command replaces only {' or '.join(replaces)}"
    if problem is not None:
        raise OutputExistsError(f"output already exists: {problem}", hint="choose another -o (or move those files away first)")
    if not force and kind != EMPTY:  # an empty folder (`mkdir out/x` first) is simply filled
        raise OutputExistsError(f"output already exists: {target} ({kind})", hint="pass --force to replace it, or choose another -o")


def check_report_free(path: Path | str) -> None:
    """A report file (`t2l bench --output`) may replace only an earlier t2l report; refuse anything else."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    doc = _json_of(path) if path.is_file() and not path.is_symlink() else None
    if not (isinstance(doc, dict) and str(doc.get("schema", "")).startswith(REPORT_SCHEMA_PREFIX)):
        what = "a folder" if path.is_dir() else "a file t2l did not write"
        raise OutputExistsError(f"--output {path} is {what}; t2l replaces only its own earlier report",
                                hint="choose another --output file name")


@contextlib.contextmanager
def atomic_dir(target: Path | str, force: bool = False, *, cache: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `target` atomically.

    `cache=True` is for folders t2l owns outright (model caches under $T2L_HOME): `force` then replaces whatever is there.

    Raises:
        OutputExistsError: `target` exists and `force` is False, or `target` is not a previous t2l output (nothing is
            touched; see `check_output_free`).
    """
    target = Path(target)
    if not (cache and force):
        check_output_free(target, force)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise T2LError(f"cannot create output folder {parent}: {exc.strerror}") from None
    _sweep_once(parent)
    tmp = parent / f"{TMP_MARK}{target.name[:100]}-{os.getpid()}-{secrets.token_hex(4)}"
    held = None
    try:  # from mkdir on: a Ctrl-C while the temporary is being held (not only while it is filled) still removes it
        try:
            tmp.mkdir()
        except OSError as exc:
            raise T2LError(f"cannot write to {parent}: {exc.strerror}") from None
        held = _hold(tmp)
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
            if not force and _inspect_output(target)[0] != EMPTY:
                raise appeared
            old = target.parent / f"{TMP_MARK}old-{target.name[:100]}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.rename(target, old)
            except FileNotFoundError:  # another process swapped it out first: try again
                continue
            os.rename(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    old.unlink()
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


def file_mode() -> int:
    """The mode a new file gets here: 0666 less the umask (0644 under umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_safetensors(tensors: dict[str, Any], path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """The one writer of safetensors outputs. safetensors writes its file via a private temporary (mode 0600); the
    result gets the mode of every other file t2l writes (0666 less the umask), so another user or a serving account
    can read the weights."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata if metadata is not None else {"format": "pt"})
    os.chmod(path, file_mode())
    return path


def write_safetensors_sha256(tensors: dict[str, Any], path: Path | str, metadata: dict[str, str] | None = None) -> str:
    """`write_safetensors` for outputs small enough to serialise in memory (adapters): the same file and mode, and
    the sha256 of its bytes, hashed before they are written (no second read of the file)."""
    import hashlib

    from safetensors.torch import save

    data = save(tensors, metadata=metadata if metadata is not None else {"format": "pt"})
    path = Path(path)
    path.write_bytes(data)
    os.chmod(path, file_mode())
    return hashlib.sha256(data).hexdigest()


def check_readable(path: Path | str, what: str = "input") -> None:
    """Fail with 'permission denied' (not 'no such file') when `path`, or a folder above it, cannot be read."""
    from t2lcli.errors import InputError

    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path):
                pass
        else:
            with open(path, "rb"):
                pass
    except PermissionError:
        raise InputError(f"permission denied: {what} {path} is not readable by this user",
                         hint="make it readable (e.g. chmod a+r, and a+x on its folders) or run as its owner") from None
    except OSError:
        return  # absent or otherwise broken: the caller reports it in its own words


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
