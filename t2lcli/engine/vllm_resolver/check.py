"""`python -m t2lcli.engine.vllm_resolver.check`: is this venv a working vLLM + t2l environment? (run by `make vllm-cpu`)

Checks that vLLM imports with the torch and transformers it pinned, that t2l's plugin entry point is visible to vLLM,
and that what t2l imports inside vLLM's process (generation, the resolver, eval's lm-eval wrapper, peft) imports with
vLLM's transformers. Prints one line per check; exits 1 on the first failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys


def main() -> int:
    checks: list[tuple[str, str]] = []

    def ok(what: str, detail: str = "") -> None:
        checks.append((what, detail))
        print(f"ok   {what}{': ' + detail if detail else ''}", flush=True)

    try:
        import torch

        ok("torch", torch.__version__)
        import transformers

        ok("transformers", transformers.__version__)
        import vllm  # noqa: F401

        ok("vllm", md.version("vllm-cpu") if _has("vllm-cpu") else md.version("vllm"))
        for name in ("torchvision", "torchaudio", "torchcodec"):
            if _has(name):
                raise RuntimeError(f"{name} is installed; vLLM's CPU build fails to import with it (pip uninstall -y {name})")
        ok("no torchvision/torchaudio/torchcodec")
        eps = [ep for ep in md.entry_points(group="vllm.general_plugins") if ep.name == "t2l"]
        if not eps:
            raise RuntimeError("t2l's entry point in group vllm.general_plugins is missing (pip install --no-deps -e .)")
        ok("entry point vllm.general_plugins:t2l", eps[0].value)
        for mod in ("t2lcli.engine.generate", "t2lcli.engine.vllm_resolver", "vllm.lora.resolver", "peft"):
            importlib.import_module(mod)
            ok(f"import {mod}")
        from t2lcli.engine.eval.backends import lm_eval_vllm

        lm_eval_vllm()
        ok("import lm-eval's vLLM wrapper")
    except Exception as exc:  # one line, then exit 1: this is an installer check
        print(f"FAIL {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _has(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
