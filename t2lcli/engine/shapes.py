"""The shapes t2l knows of bases (`t2lcli/data/shapes/NAME.json`) and a base's config.json, read offline.

Infrastructure shared by bench (plans and floors from shapes) and inspect (compat checks need the base's sizes);
neither verb imports the other's module for it. No torch, no download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2lcli.errors import InputError

SHAPES_DIR = Path(__file__).resolve().parent.parent / "data" / "shapes"


def shape_names() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def load_shape(name: str) -> dict[str, Any]:
    """The stored config.json numbers and official hypernetwork sizes of a base (`t2lcli/data/shapes/NAME.json`).

    Raises:
        InputError: unknown name.
    """
    path = SHAPES_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(f"unknown shapes '{name}'", hint=f"choose one of: {', '.join(shape_names())}")
    return json.loads(path.read_text(encoding="utf-8"))


def base_config(base: str | None, *, hub_cache: bool = True, known_shapes: bool = True) -> dict[str, Any] | None:
    """The base's config.json if it is available offline, else None (never downloads).

    Looks in a local folder, the converted registry model, then (if `hub_cache`) the Hugging Face cache and (if
    `known_shapes`) the stored shapes of the bases t2l knows.
    """
    if not base:
        return None
    from t2lcli import registry
    from t2lcli.engine.base_model import converted_dir

    candidates = [Path(base).expanduser()]
    entry = registry.lookup(base)
    if entry is not None and entry.source == "gguf-package":
        candidates.append(converted_dir(entry))
    hub = entry.hub_id if entry is not None else (base if base.count("/") == 1 and not Path(base).exists() else None)
    if hub and hub_cache:
        try:
            from huggingface_hub import snapshot_download

            candidates.append(Path(snapshot_download(hub, allow_patterns=["config.json"], local_files_only=True)))
        except Exception:  # not in the cache (or no huggingface_hub): the other candidates decide
            pass
    for c in candidates:
        if (c / "config.json").is_file():
            try:
                return json.loads((c / "config.json").read_text(encoding="utf-8"))
            except ValueError:
                return None
    if known_shapes:
        for f in SHAPES_DIR.glob("*.json"):
            data = json.loads(f.read_text(encoding="utf-8"))
            if base.lower() in (data["hub_id"].lower(), data["registry_name"]):
                return data["config"]
    return None
