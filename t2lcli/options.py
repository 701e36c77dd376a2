"""Shared command-line options, defined once (architecture.md 7.6.4). Only builtins/Path/Enum in annotations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from t2lcli.dtypes import DTYPE_SPELLINGS
from t2lcli.errors import InputError, UsageError


class Dtype(str, Enum):
    """Every spelling of t2lcli.dtypes.DTYPE_SPELLINGS (bf16 = bfloat16, …)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DTYPE_NAMES = DTYPE_SPELLINGS

ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Hardware profile: a shipped name (cpu, gpu-16gb, gpu-24gb, gpu-80gb) or a YAML path.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a profile key, e.g. --set base.dtype=bfloat16 (repeatable).")
]
CheckpointOpt = Annotated[
    str | None, typer.Option("--checkpoint", "-c", help="T2L checkpoint: 'default', a native or official folder, or owner/repo/folder on the hub.")
]
BaseModelOpt = Annotated[
    str | None, typer.Option("--base-model", "-m", help="Base model: registry name, local folder or hub id.")
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output folder.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an earlier t2l output at -o (never a folder or file t2l did not write; without it: refuse, touch nothing).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow encoders that run code from their repository (gte-large-en-v1.5).")
]


@contextmanager
def flag_values() -> Iterator[None]:
    """Checks of the flags alone (a number out of range, a name not among the choices, flags that contradict each
    other) run inside this, before anything heavy is imported: their InputError is a usage error (exit 2, as click's
    own). Errors about what a flag names (a missing file, a malformed recipe) are not flag checks: exit 1."""
    try:
        yield
    except InputError as exc:
        if type(exc) is not InputError:  # UsageError already, or a more specific kind (data, config, ...)
            raise
        raise UsageError(exc.message, exc.hint) from None


def at_least(flag: str, value: float | None, low: float) -> None:
    """`flag` (when given) is at least `low`: a usage error otherwise."""
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low:g}, got {value:g}")


def readable_file(what: str, path: Path) -> None:
    """A file a flag names exists and can be read (exit 1 otherwise, one line): checked by the command before the
    engine is imported, so that a typo fails in well under a second. The engine checks again when it opens it."""
    from t2lcli.engine.atomic import check_readable  # stdlib only

    check_readable(path, what)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}" if not path.is_dir() else f"{what} is a folder, not a file: {path}", hint="check the path")


SHIPPED_CHECKPOINTS = ("default",)  # t2lcli.engine.checkpoint.SHIPPED's names (a test keeps them equal; that module imports torch)


def checkpoint_spec(spec: str | None) -> None:
    """--checkpoint (or convert's SOURCE) names something `resolve_checkpoint` can resolve: a shipped name, an existing
    folder, or owner/repo/folder on the hub. Checked before the engine (torch) is imported, as it reports them."""
    from t2lcli.engine.atomic import check_readable  # stdlib only
    from t2lcli.errors import CheckpointError

    if spec is None or spec in SHIPPED_CHECKPOINTS:
        return
    path = Path(spec).expanduser()
    check_readable(path, "checkpoint folder")
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint must be a folder, got a file: {path}")
        return
    if not spec.startswith((".", "/", "~")) and spec.count("/") >= 2 and "//" not in spec:
        return  # the hub: the engine fetches (or reports offline)
    raise CheckpointError(f"checkpoint not found: {spec}", hint="pass a folder with t2l_config.json or hypermod.pt")
