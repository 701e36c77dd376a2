"""Shared command-line options, defined once (architecture.md 7.6.4). Only builtins/Path/Enum in annotations."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from t2lcli.dtypes import DTYPE_SPELLINGS


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
