"""t2l: Text-to-LoRA command-line toolkit.

Only the version and lazy helpers live here: `import t2lcli` imports no torch (keeps `t2l --help` fast).

    import t2lcli
    model, tokenizer = t2lcli.load_base("default")      # the embedded SmolLM2-135M-Instruct, offline
    gen = t2lcli.Generator.load("default")              # the shipped T2L checkpoint
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Generator", "__version__", "load_base"]


def load_base(spec: str | None = "default", device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """Load a base model and its tokenizer offline: "default" (the embedded SmolLM2-135M-Instruct, converted once into
    `$T2L_HOME`), a registry name, a Hub id the registry knows (resolved to its local copy) or a local folder.

    Returns:
        (transformers causal LM in eval mode, tokenizer)
    """
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.hw_profiles import ComponentSettings

    return load_base_model(None if spec in (None, "default") else spec, ComponentSettings(device=device, dtype=dtype))


def __getattr__(name: str) -> Any:  # lazy: `t2lcli.Generator` imports torch only when used
    if name == "Generator":
        from t2lcli.engine.generate import Generator

        return Generator
    raise AttributeError(f"module 't2lcli' has no attribute {name!r}")
