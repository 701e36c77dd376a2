"""The one rule for what counts as a task description (stdlib only; used by every entry point: `t2l generate`, batch
lines, `t2l eval`/`t2l merge --description`, the Python API, `t2l serve`).

A description must hold visible text: after Unicode normalisation (NFKC) at least one letter, digit or symbol, and at
most MAX_DESCRIPTION_CHARS characters. Whitespace, control characters (`\\x01`), format characters (zero-width space,
joiners, BOM) and punctuation alone are refused with one line.
"""

from __future__ import annotations

import unicodedata

MAX_DESCRIPTION_CHARS = 20_000  # a task description is a sentence or a paragraph
DESCRIPTION_HINT = 'describe the task in words, e.g. "solve grade-school math step by step"'


def valid_text(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes in argv, `\\ud800` escapes in JSON) replaced by U+FFFD, so it
    can be written to UTF-8 files and printed."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # undecodable bytes of an argument (surrogateescape): back to the bytes, one U+FFFD per bad sequence
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def has_visible_text(text: str) -> bool:
    """True when `text` holds a letter, digit or symbol after NFKC normalisation (not only whitespace, control,
    zero-width/format characters, combining marks or punctuation)."""
    norm = unicodedata.normalize("NFKC", valid_text(text))
    return any(unicodedata.category(ch)[0] in "LNS" and ch != "\ufffd" for ch in norm)


def description_problem(text: object) -> str | None:
    """Why `text` cannot be a description, or None. The one validation rule."""
    if not isinstance(text, str):
        return "a description must be text"
    n = len(text.strip())
    if n == 0:
        return "empty description"
    if n > MAX_DESCRIPTION_CHARS:
        return f"description is {n} characters; the limit is {MAX_DESCRIPTION_CHARS}"
    if not has_visible_text(text):
        return "description has no visible text (only control, zero-width or punctuation characters)"
    return None


def check_description(text: object, what: str = "") -> str:
    """`text` when it is a valid description; else InputError with the problem (prefixed by `what`, e.g. '--description')."""
    problem = description_problem(text)
    if problem is not None:
        from t2lcli.errors import InputError

        hint = "a task description is a sentence or a paragraph, not a document" if "limit" in problem else DESCRIPTION_HINT
        raise InputError(f"{what}: {problem}" if what else problem, hint=hint)
    return text  # type: ignore[return-value]
