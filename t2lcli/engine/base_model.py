"""Base models: load one (dtype, device, quantization from a hardware profile) — and, re-exported here as the one
import for callers, resolve a name/path/hub id and convert the embedded GGUF default (`model_files`) and compute
shapes from a `config.json` alone (`model_shape`), which is all the hypernetwork needs to generate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from t2lcli import registry
from t2lcli.dtypes import DTYPE_SPELLINGS
from t2lcli.errors import T2LError

if TYPE_CHECKING:
    from t2lcli.hw_profiles import ComponentSettings

from t2lcli.engine.model_files import (
    converted_dir,
    ensure_converted,
    gguf_source,
    hub_snapshot,
    quiet_transformers,
    resolve_model,
)
from t2lcli.engine.model_shape import ATTN_MODULES, SUPPORTED_TYPES, ModelShape, ModuleShape, read_config, shape_from_config

__all__ = ["ATTN_MODULES", "SUPPORTED_TYPES", "ModelShape", "ModuleShape", "converted_dir", "ensure_converted", "gguf_source",
           "hub_snapshot", "load_base_model", "quantization_config", "quiet_transformers", "read_config", "resolve_device",
           "resolve_model", "shape_from_config", "torch_dtype"]


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    try:
        return getattr(torch, DTYPE_SPELLINGS[name])
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
