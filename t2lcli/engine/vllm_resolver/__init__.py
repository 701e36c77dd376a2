"""A vLLM LoRA resolver: `vllm serve BASE --enable-lora` answers `model: "t2l:<description>"` with a generated adapter.

vLLM loads it as a general plugin (entry point group `vllm.general_plugins`, name `t2l`). It stays inactive unless
`VLLM_PLUGINS` names `t2l` (vLLM itself loads every installed plugin when `VLLM_PLUGINS` is unset), and vLLM consults
resolvers only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`:

    VLLM_PLUGINS=t2l VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 vllm serve BASE --enable-lora --max-lora-rank 8

Model names (the request's `model` field):
    t2l:<description>          raw text, 1..MAX_NAME_DESCRIPTION characters (JSON carries any text)
    t2l:b64:<base64url>        the UTF-8 description in base64url without padding (safe in URLs and headers)
    t2l:<adapter id>           12-64 lowercase hex characters: a unique prefix of an adapter's id in the cache

An adapter's id is the sha256 of its `adapter_model.safetensors`, the `sha256` that `t2l generate --json` prints for
the same description, checkpoint and profile. Adapters are written once into the cache folder (`T2L_VLLM_CACHE`,
default `/dev/shm/t2l-vllm-<uid>` where /dev/shm is writable, else `$T2L_HOME/vllm-adapters`) as `<id>/` PEFT folders.
The checkpoint is `T2L_CHECKPOINT` (default: the shipped default), the profile `T2L_PROFILE` (default: cpu).

A name that is not `t2l:…`, an empty or over-long description, bad base64 or an unknown id make the resolver return
None: vLLM then answers its usual 404 "model does not exist" and keeps serving. Nothing here imports torch until the
first request that needs a generated adapter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

PREFIX = "t2l:"
B64_PREFIX = "b64:"
MAX_NAME_DESCRIPTION = 2000  # characters of a description carried in a model name (t2l generate allows 20,000)
ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
PLUGIN_NAME = "t2l"

log = logging.getLogger("t2lcli.vllm_resolver")


# ------------------------------------------------------------------------------------------------ names


def encode_name(description: str) -> str:
    """The URL-safe model name for a description: `t2l:b64:<base64url, no padding>`."""
    return PREFIX + B64_PREFIX + base64.urlsafe_b64encode(description.encode("utf-8")).decode("ascii").rstrip("=")


def parse_name(name: str) -> tuple[str, str] | None:
    """`("id", hex)` or `("description", text)` for a t2l model name; None for any other or an invalid one."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    body = name[len(PREFIX):]
    if body.startswith(B64_PREFIX):
        raw = body[len(B64_PREFIX):]
        if not re.fullmatch(r"[A-Za-z0-9_-]*", raw):
            return None
        try:
            body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
    elif ID_RE.match(body):
        return ("id", body)
    from t2lcli.descriptions import description_problem

    if len(body) > MAX_NAME_DESCRIPTION or description_problem(body) or any(ord(c) < 32 and c not in "\t\n" for c in body):
        return None
    return ("description", body)


def adapter_id(weights_file: Path | str) -> str:
    """An adapter's content-hash id: the sha256 of its weights file (what `t2l generate --json` reports as sha256)."""
    from t2lcli.engine.adapters import tensors_sha256

    return tensors_sha256(Path(weights_file))


def lora_int_id(adapter_hex: str) -> int:
    """vLLM's integer LoRA id for an adapter id: stable across processes (Python's hash() is not), positive, < 2**62."""
    return int(adapter_hex[:15], 16) + 1


def cache_dir() -> Path:
    env = os.environ.get("T2L_VLLM_CACHE")
    if env:
        return Path(env).expanduser()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"t2l-vllm-{os.getuid()}"
    from t2lcli.registry import t2l_home

    return t2l_home() / "vllm-adapters"


# ------------------------------------------------------------------------------------------------ generation


class T2LAdapterCache:
    """Generates adapters for descriptions once and keeps them as `<cache>/<id>/` PEFT folders (thread-safe)."""

    def __init__(self, root: Path | None = None, checkpoint: str | None = None, profile: str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.checkpoint = checkpoint if checkpoint is not None else os.environ.get("T2L_CHECKPOINT") or None
        self.profile_name = profile if profile is not None else os.environ.get("T2L_PROFILE") or None
        self._gen: Any = None
        self._lock = threading.Lock()

    def _generator(self) -> Any:
        if self._gen is None:
            from t2lcli.engine.generate import Generator
            from t2lcli.hw_profiles import load_profile

            p = load_profile(self.profile_name)
            if p.threads:
                import torch

                torch.set_num_threads(p.threads)
            self._gen = Generator.load(self.checkpoint, device=p.hypernet.device, dtype=p.hypernet.dtype, encoder_device=p.encoder.device,
                                       encoder_dtype=p.encoder.dtype)
        return self._gen

    def _index(self, description: str) -> Path:
        key = hashlib.sha256(json.dumps([self.checkpoint or "default", self.profile_name or "cpu", description]).encode("utf-8")).hexdigest()
        return self.root / "by-description" / key

    def lookup(self, prefix: str) -> Path | None:
        """The cached adapter folder whose id starts with `prefix` (None when none or more than one does)."""
        try:
            hits = [p for p in self.root.iterdir() if p.name.startswith(prefix) and ID_RE.match(p.name) and (p / "adapter_config.json").is_file()]
        except OSError:
            return None
        return hits[0] if len(hits) == 1 else None

    def for_description(self, description: str) -> Path:
        """The adapter folder for `description`, generated on the first request. Raises T2LError on failure."""
        from t2lcli.engine.adapters import WEIGHTS_NAME

        with self._lock:
            idx = self._index(description)
            if idx.is_file():
                hit = self.root / idx.read_text(encoding="utf-8").strip()
                if (hit / WEIGHTS_NAME).is_file():
                    return hit
            gen = self._generator()
            final = store_adapter(self.root, gen.generate([description])[0])
            idx.parent.mkdir(parents=True, exist_ok=True)
            tmp = idx.with_name(f".{idx.name}.{os.getpid()}")
            tmp.write_text(final.name, encoding="utf-8")
            os.replace(tmp, idx)  # the index entry appears whole or not at all
            return final


def store_adapter(root: Path, adapter: Any) -> Path:
    """Write `adapter` once as the PEFT folder `root/<id>/` (what `t2l generate` writes, float32) and return it.

    The id is the sha256 of the written weights file; a folder already holding that id is kept (same bytes). Written
    under a staging name and renamed, so a reader (vLLM loading the LoRA) never sees half a folder. Used by the
    resolver and by `t2l serve --backend vllm`: one cache layout, one id.
    """
    import torch

    from t2lcli.engine.adapters import WEIGHTS_NAME, save_adapter

    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}-{threading.get_ident()}"
    save_adapter(adapter, staging, force=True, dtype=torch.float32)
    ident = adapter_id(staging / WEIGHTS_NAME)
    final = root / ident
    if (final / WEIGHTS_NAME).is_file():
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


# ------------------------------------------------------------------------------------------------ the vLLM side


def make_resolver(cache: T2LAdapterCache | None = None) -> Any:
    """A vllm.lora.resolver.LoRAResolver subclass instance backed by `cache` (imports vLLM)."""
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    store = cache or T2LAdapterCache()

    class T2LResolver(LoRAResolver):  # type: ignore[misc, valid-type]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            parsed = parse_name(lora_name)
            if parsed is None:
                return None
            kind, value = parsed
            try:
                if kind == "id":
                    path = store.lookup(value)
                else:
                    path = await asyncio.to_thread(store.for_description, value)
            except Exception as exc:  # a failed generation must not take the server down; vLLM answers 404
                log.warning("t2l: no adapter for %r: %s", lora_name[:80], getattr(exc, "message", None) or exc)
                return None
            if path is None:
                return None
            return LoRARequest(lora_name=lora_name, lora_int_id=lora_int_id(path.name), lora_path=str(path))

    resolver = T2LResolver()
    resolver.store = store  # type: ignore[attr-defined]
    return resolver


def enabled() -> bool:
    """True when VLLM_PLUGINS names this plugin explicitly."""
    names = [n.strip() for n in (os.environ.get("VLLM_PLUGINS") or "").split(",")]
    return PLUGIN_NAME in names


def register() -> None:
    """vLLM's general-plugin hook: register the resolver under the name `t2l` (only when VLLM_PLUGINS names it)."""
    if not enabled():
        return
    from vllm.lora.resolver import LoRAResolverRegistry

    if PLUGIN_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return
    LoRAResolverRegistry.register_resolver(PLUGIN_NAME, make_resolver())
