"""User-facing errors. Each carries a one-line message and, where useful, the next step to take.

The CLI error boundary (`t2lcli.cli.main`) prints them as one line (plus the hint) and exits 1.
"""

from __future__ import annotations

from typing import Any


class T2LError(Exception):
    """An error meant for the user: printed as one line, no traceback, exit code 1."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ProfileError(T2LError):
    """A hardware profile or `--set` override is missing or invalid (all problems listed at once)."""


class ConfigError(T2LError):
    """A recipe or other config file is invalid."""


class ModelNotFoundError(T2LError):
    """A model name, path or hub id cannot be resolved offline."""


class AdapterFormatError(T2LError):
    """A PEFT adapter folder is missing files or has inconsistent tensors."""


class CheckpointError(T2LError):
    """A T2L checkpoint (native or official) is missing, corrupt or inconsistent."""


class ShapeMismatchError(T2LError):
    """Tensors or models do not fit together (e.g. an adapter for another base)."""


class InputError(T2LError):
    """Bad user input: an empty description, a malformed batch line, a bad flag combination."""


class UsageError(InputError):
    """A wrong combination of arguments (a missing required one, two that contradict): exit code 2, like click's."""

    exit_code = 2


class OutputExistsError(T2LError):
    """The output already exists; nothing was touched."""


class DataError(T2LError):
    """Training or evaluation data is missing or malformed."""


def format_problems(header: str, problems: list[str]) -> str:
    """Join many problems into one message: `header: p1; p2; …` (kept on one logical line)."""
    if len(problems) == 1:
        return f"{header}: {problems[0]}"
    return f"{header} ({len(problems)} problems): " + "; ".join(problems)


def show_value(value: Any, limit: int = 60) -> str:
    """A short one-line repr of a user-supplied value for an error message (bounded: never expands a huge or
    self-referencing structure)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = 6
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit + 20 else text[: limit + 17] + "..."


def show_key(key: Any, limit: int = 60) -> str:
    """A config key as typed (plain identifiers as they are, anything else as a short repr)."""
    if isinstance(key, str) and key.replace(".", "_").replace("-", "_").isidentifier() and len(key) <= limit:
        return key
    return show_value(key, limit)


class RankLimitError(T2LError):
    """An adapter's rank is above what the target runtime accepts."""
