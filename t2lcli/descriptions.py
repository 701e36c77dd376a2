"""Descriptions from a batch file (`t2l generate --from-file`), checked line by line: stream them from
.txt/.jsonl/stdin with line numbers, each through the one description rule (`t2lcli.text`), with safe unique folder
names and per-line errors. Stdlib only. (Formerly `t2lcli.batch`, which still re-exports it.)
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from t2lcli.errors import InputError
from t2lcli.text import MAX_DESCRIPTION_CHARS, description_problem, valid_text

__all__ = ["MAX_DESCRIPTION_CHARS", "BadLine", "Item", "description_problem", "iter_items", "slugify", "valid_text"]

MAX_NAME = 80
MAX_LINE_BYTES = 1 << 20  # a longer batch line is reported (and skipped with --skip-bad) without being held in memory
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


@dataclass
class Item:
    line: int
    name: str
    description: str


@dataclass
class BadLine:
    line: int
    reason: str


def slugify(text: str, fallback: str) -> str:
    """A safe folder name: ASCII letters, digits, '-' and '_', at most 80 chars, never '.', '..' or a device name."""
    norm = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9_-]+", "-", norm).strip("-_")[:MAX_NAME].strip("-_")
    if not slug or slug in _RESERVED:
        slug = fallback
    return slug


class NameAllocator:
    """Makes names unique within one run (`x`, `x-2`, `x-3`, …)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        n = self.seen.get(name, 0) + 1
        self.seen[name] = n
        if n == 1:
            return name
        candidate = f"{name[: MAX_NAME - 8]}-{n}"
        while candidate in self.seen:
            n += 1
            candidate = f"{name[: MAX_NAME - 8]}-{n}"
        self.seen[candidate] = 1
        return candidate


def _open(source: str) -> IO[bytes]:
    if source == "-":
        return sys.stdin.buffer
    path = Path(source)
    from t2lcli.engine.atomic import check_readable

    check_readable(path, "batch file")
    if not path.is_file():
        raise InputError(f"batch file not found: {source}")
    return open(path, "rb")


def iter_items(source: str) -> Iterator[Item | BadLine]:
    """Yield one Item (or BadLine) per non-blank line, streaming (constant memory)."""
    fmt = "jsonl" if source.endswith((".jsonl", ".json")) else None
    fh = _open(source)
    names = NameAllocator()
    try:
        for lineno, raw in enumerate(_lines(fh), start=1):
            if raw is None:
                yield BadLine(lineno, f"line is longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine(lineno, f"invalid UTF-8 at byte {exc.start}")
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            line_fmt = fmt or ("jsonl" if text.lstrip().startswith("{") else "txt")
            if line_fmt == "jsonl":
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    where = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                    yield BadLine(lineno, f"malformed JSON ({where})")
                    continue
                except RecursionError:
                    yield BadLine(lineno, "malformed JSON (nested too deeply)")
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("description"), str):
                    yield BadLine(lineno, "expected an object with a string 'description'")
                    continue
                desc = obj["description"]
                raw_name = obj.get("name")
                if raw_name is not None and not isinstance(raw_name, str):
                    yield BadLine(lineno, "'name' must be a string")
                    continue
            else:
                desc, raw_name = text, None
            problem = description_problem(desc)
            if problem:
                yield BadLine(lineno, problem)
                continue
            fallback = f"adapter-{lineno:06d}"
            yield Item(lineno, names(slugify(raw_name if raw_name else desc[:60], fallback)), valid_text(desc))
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _lines(fh: IO[bytes]) -> Iterator[bytes | None]:
    """Lines of at most MAX_LINE_BYTES; a longer line is consumed in bounded pieces and yielded as None."""
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        del line
        while True:  # the rest of the over-long line, 64 KiB at a time
            piece = fh.readline(1 << 16)
            if not piece or piece.endswith(b"\n"):
                break
        yield None
