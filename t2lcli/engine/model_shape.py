"""A base model's shape from its `config.json` alone (no weights): layers, hidden size and each LoRA target's
(in, out) dims — all the hypernetwork needs to generate an adapter for it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli.errors import ModelNotFoundError, T2LError

if TYPE_CHECKING:
    pass

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
