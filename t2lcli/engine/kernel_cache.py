"""Where `kernel: auto`'s choices live: the machine fingerprint a choice is valid for (CPU model and GEMM flags, cores,
torch and numpy versions, torch threads) and `$T2L_HOME/kernels.json`, merged under a lock and written atomically (a
read-only home only loses the cache). Used by `t2lcli.engine.kernels`."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

SCHEMA = "t2l-kernels/1"
GEMM_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16"}


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU model name and the ISA flags that decide GEMM speed (from /proc/cpuinfo; platform otherwise)."""
    import platform

    model = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = sorted(f for f in have if f in GEMM_FLAGS)
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def fingerprint() -> dict[str, Any]:
    """What a cached choice is valid for."""
    import numpy

    model, flags = cpu_model_and_flags()
    return {"cpu": model, "flags": flags, "cores": os.cpu_count(), "torch": torch.__version__, "numpy": numpy.__version__,
            "threads": torch.get_num_threads()}


def fingerprint_key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def cache_path() -> Path:
    from t2lcli.registry import t2l_home

    return t2l_home() / "kernels.json"


def read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and data.get("schema") == SCHEMA else {"schema": SCHEMA, "machines": {}}
    except (OSError, ValueError):
        return {"schema": SCHEMA, "machines": {}}


def save_choice(key: str, shape: str, kernel: str, times: dict[str, float]) -> None:
    """Merge one choice into $T2L_HOME/kernels.json (locked, atomic); a read-only home only loses the cache."""
    from t2lcli.engine.atomic import atomic_write_bytes, file_lock

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(".kernels.lock")):
            data = read_cache()
            entry = data.setdefault("machines", {}).setdefault(key, {"fingerprint": fingerprint(), "choices": {}})
            entry.setdefault("choices", {})[shape] = {"kernel": kernel, "ms": {k: round(v * 1000, 3) for k, v in times.items()},
                                                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass
