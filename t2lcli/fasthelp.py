"""The `t2l` entry point: `t2l --help` and `t2l COMMAND --help` answered from a cache of what Typer printed.

Rendering help imports typer, click and rich (~2x a bare `import typer`). The first time a help screen is asked for,
it is rendered as usual and what went to stdout is kept in `$T2L_HOME/help/`; later the same request, under the same
conditions, is answered from there with the standard library alone. The cache key holds everything the rendering
depends on outside the code: the arguments, t2l's and Python's version, whether stdout is a terminal and its size,
and the environment variables rich, click, typer and t2l read (COLUMNS, NO_COLOR, FORCE_COLOR, TERM, T2L_*, ...).
The code is checked on every hit: the entry records each module file that rendering imported (t2l's commands,
typer, rich, plugins) with its size and mtime, and a fingerprint of every distribution's `entry_points.txt` on
sys.path (a plugin installed or removed); any change re-renders. Unwritable or damaged cache: rendered as usual.
`T2L_HELP_CACHE=0` turns it off.
"""

from __future__ import annotations

import os
import sys

_ENV_EXACT = ("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
              "TERMINAL_WIDTH", "CLICOLOR", "CLICOLOR_FORCE", "JUPYTER_COLUMNS", "JUPYTER_LINES", "LANG", "LANGUAGE",
              "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "PYTHONIOENCODING", "PYTHONUTF8")
_ENV_PREFIXES = ("T2L_", "TYPER_", "_TYPER", "RICH_", "_T2L")
FORMAT = 1  # bump when the entry's layout changes


def help_request(argv: list[str]) -> bool:
    """`--help`/`-h`, alone or after one command name: the requests whose whole output is a help screen."""
    if len(argv) == 1:
        return argv[0] in ("--help", "-h")
    cmd = argv[0] if len(argv) == 2 else ""
    return argv[1:] in (["--help"], ["-h"]) and cmd[:1].isalpha() and cmd.replace("-", "").isalnum() and cmd.isascii()


def _home() -> str:
    return os.path.expanduser(os.environ.get("T2L_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "t2l"))


def _terminal() -> list[object]:
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    size: object = None
    if tty:
        try:
            size = list(os.get_terminal_size(sys.stdout.fileno()))
        except (OSError, ValueError, AttributeError):
            size = None
    return [tty, size, getattr(sys.stdout, "encoding", None)]


def cache_key(argv: list[str]) -> str:
    import hashlib
    import json

    from t2lcli import __version__

    env = sorted((k, v) for k, v in os.environ.items() if k in _ENV_EXACT or k.startswith(_ENV_PREFIXES))
    doc = [FORMAT, __version__, sys.version, sys.executable, argv, _terminal(), env]
    return hashlib.sha256(json.dumps(doc).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def distributions_fingerprint() -> list[list[object]]:
    """(folder, distribution, size, mtime) of each entry_points.txt on sys.path: a plugin added, removed or changed."""
    out: list[list[object]] = []
    for folder in sys.path:
        try:
            with os.scandir(folder or ".") as it:
                names = sorted(e.name for e in it if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:  # not a folder: a zip or an egg on sys.path (its own size and mtime), or absent
            try:
                st = os.stat(folder)
                out.append([folder, None, st.st_size, st.st_mtime_ns])
            except OSError:
                pass
            continue
        for name in names:
            try:
                st = os.stat(os.path.join(folder or ".", name, "entry_points.txt"))
            except OSError:
                continue
            out.append([folder, name, st.st_size, st.st_mtime_ns])
    return out


def _files_unchanged(files: list[list[object]]) -> bool:
    for path, size, mtime in files:
        try:
            st = os.stat(str(path))
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime:
            return False
    return True


def cached(argv: list[str]) -> str | None:
    """The cached help text for this request, or None (no entry, stale, unreadable)."""
    import json

    try:
        with open(os.path.join(_home(), "help", cache_key(argv) + ".json"), encoding="utf-8") as fh:
            entry = json.load(fh)
        if entry["format"] != FORMAT or not _files_unchanged(entry["files"]):
            return None
        if entry["distributions"] != distributions_fingerprint():
            return None
        text = entry["out"]
        return text if isinstance(text, str) else None
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is a miss, never an error
        return None


def _imported_files() -> list[list[object]]:
    """Size and mtime of every module file imported so far, outside the standard library."""
    import sysconfig

    stdlib = {os.path.realpath(sysconfig.get_path(k)) + os.sep for k in ("stdlib", "platstdlib")}
    files = []
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if any(real.startswith(s) for s in stdlib) and "site-packages" not in real:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append([path, st.st_size, st.st_mtime_ns])
    return sorted(files)


def store(argv: list[str], text: str) -> None:
    """Keep a rendered help screen; any failure (unwritable T2L_HOME, full disk) leaves no trace and no error."""
    import json
    import tempfile

    try:
        folder = os.path.join(_home(), "help")
        os.makedirs(folder, exist_ok=True)
        entry = {"format": FORMAT, "argv": argv, "files": _imported_files(), "distributions": distributions_fingerprint(), "out": text}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh)
            os.replace(tmp, os.path.join(folder, cache_key(argv) + ".json"))
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception:  # noqa: BLE001, S110 - the cache is an optimisation only
        pass


class _Tee:
    """sys.stdout as it was (a terminal stays a terminal for rich), keeping a copy of what is written."""

    def __init__(self, stream: object) -> None:
        self._stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        n = self._stream.write(text)  # type: ignore[attr-defined]  # first: click probes with write(b"") (a TypeError)
        self.parts.append(text)
        return n  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main() -> None:
    argv = sys.argv[1:]
    if not help_request(argv) or os.environ.get("T2L_HELP_CACHE", "1") == "0":
        from t2lcli.cli import main as cli_main

        cli_main()
        return
    text = cached(argv)
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
        sys.exit(0)
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        from t2lcli.cli import main as cli_main

        cli_main()
    except SystemExit as exc:
        sys.stdout, sys.stderr = out._stream, err._stream  # type: ignore[assignment]
        if exc.code in (0, None) and not err.parts:  # a warning (a plugin that failed to load) is shown every time
            store(argv, "".join(out.parts))
        raise
    finally:
        sys.stdout, sys.stderr = out._stream, err._stream  # type: ignore[assignment]
