"""Output channels: results go to stdout (plain or JSON), logs and progress to stderr.

rich is imported lazily so that merely importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_state: dict[str, Any] = {"verbose": 0}


def set_verbosity(level: int) -> None:
    _state["verbose"] = level


def verbosity() -> int:
    return _state["verbose"]


def err_console() -> Any:
    """The shared rich Console on stderr (created on first use)."""
    if "console" not in _state:
        from rich.console import Console

        _state["console"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _state["console"]


def out_console() -> Any:
    """A rich Console on stdout for human-readable results (tables)."""
    if "out" not in _state:
        from rich.console import Console

        _state["out"] = Console(highlight=False, soft_wrap=True)
    return _state["out"]


def log(message: str) -> None:
    """An informational line on stderr."""
    err_console().print(message, markup=False)


def debug(message: str) -> None:
    if verbosity() > 0 or os.environ.get("T2L_DEBUG"):
        err_console().print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    err_console().print(f"[yellow]warning:[/yellow] {_escape(message)}")


def error(message: str, hint: str | None = None) -> None:
    err_console().print(f"[red bold]error:[/red bold] {_escape(message)}")
    if hint:
        err_console().print(f"[dim]hint:[/dim] {_escape(hint)}")


def emit(text: str) -> None:
    """A plain result line on stdout."""
    sys.stdout.write(_printable(text) + "\n")
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    """One JSON document (a single line) on stdout."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    # characters that some line readers treat as line breaks stay escaped, so one document is always one line
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
    sys.stdout.write(_printable(text) + "\n")
    sys.stdout.flush()


def _printable(text: str) -> str:
    """`text` as stdout can encode it: lone surrogates (undecodable bytes in a path or argument) become \\udcXX."""
    import codecs

    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        codecs.lookup(enc)
    except LookupError:
        enc = "utf-8"
    try:
        text.encode(enc)
        return text
    except UnicodeEncodeError:
        return text.encode(enc, "backslashreplace").decode(enc, "replace")


def progress(transient: bool = False) -> Any:
    """A rich Progress on stderr; disabled when stderr is not a terminal and T2L_PROGRESS is unset."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    disable = not (err_console().is_terminal or os.environ.get("T2L_PROGRESS"))
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=transient,
        disable=disable,
    )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
