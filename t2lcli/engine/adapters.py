"""PEFT LoRA adapter folders: write (atomically, with a model card) and read (validated, all problems at once).

On-disk contract (peft): `adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.model.layers.{l}.self_attn.{m}.lora_A.weight [r, d_in]` / `.lora_B.weight [d_out, r]`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from t2lcli import __version__
from t2lcli.engine.atomic import atomic_dir, check_readable
from t2lcli.errors import AdapterFormatError, format_problems, show_key, show_value

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.(?P<mod>[A-Za-z0-9_]+)\.lora_(?P<ab>[AB])\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class Adapter:
    """A LoRA adapter in memory: PEFT config dict + PEFT-keyed tensors + card metadata."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """The effective scale a PEFT runtime applies: alpha/sqrt(r) with rsLoRA, else alpha/r."""
        return effective_scaling(self.config)

    def modules(self) -> list[str]:
        return list(self.config.get("target_modules") or [])

    def n_layers(self) -> int:
        layers = {int(m.group(1)) for k in self.tensors if (m := _LAYER.search(k))}
        return max(layers) + 1 if layers else 0

    def delta(self, key_prefix: str) -> torch.Tensor:
        """ΔW = scaling · B @ A for one module (key without `.lora_A.weight`)."""
        a = self.tensors[f"{key_prefix}.lora_A.weight"].float()
        b = self.tensors[f"{key_prefix}.lora_B.weight"].float()
        return self.scaling * (b @ a)

    def prefixes(self) -> list[str]:
        return sorted({k[: -len(".lora_A.weight")] for k in self.tensors if k.endswith(".lora_A.weight")})


def effective_scaling(config: dict[str, Any]) -> float:
    r = float(config["r"])
    alpha = float(config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def peft_config(
    r: int,
    lora_alpha: float,
    target_modules: list[str],
    base_model: str | None,
    use_rslora: bool = True,
    lora_dropout: float = 0.0,
) -> dict[str, Any]:
    """A minimal adapter_config.json that peft, vLLM and SGLang all read.

    The base is recorded as a Hub id (a registry name such as `smollm2-135m-instruct` becomes
    `HuggingFaceTB/SmolLM2-135M-Instruct`), so `AutoPeftModelForCausalLM` finds it online; t2l resolves the same id to
    its local copy offline. `lora_alpha` is an integer where it is one (Ollama decodes it as an unsigned integer).
    """
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": hub_base_id(base_model),
        "r": int(r),
        "lora_alpha": alpha_value(lora_alpha),
        "use_rslora": bool(use_rslora),
        "lora_dropout": float(lora_dropout),
        "target_modules": list(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": False,
    }


def hub_base_id(base_model: str | None) -> str | None:
    """A registry name or hub id -> the Hub id (case as the registry spells it); a local folder or unknown id as given."""
    if not base_model:
        return base_model
    from t2lcli.registry import lookup

    entry = lookup(str(base_model))
    return entry.hub_id if entry is not None else base_model


def alpha_value(alpha: float) -> int | float:
    """lora_alpha as JSON: an int where it is a whole number (16, not 16.0)."""
    a = float(alpha)
    return int(a) if a.is_integer() else a


def tensors_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_sha256(adapter: Adapter, dtype: torch.dtype | None = None) -> str:
    """An adapter's id without writing it: the sha256 of the `adapter_model.safetensors` that `save_adapter` writes
    (the `sha256` of `t2l generate --json`; `t2l serve` and the vLLM resolver use the same content hash)."""
    from safetensors.torch import save

    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in sorted(adapter.tensors.items())}
    return hashlib.sha256(save(tensors, metadata={"format": "pt"})).hexdigest()


def model_card(adapter: Adapter) -> str:
    """README.md for an adapter: description, base, scaling and provenance. Deterministic (no timestamps)."""
    c, m = adapter.config, adapter.meta
    rs = "rsLoRA alpha/sqrt(r)" if c.get("use_rslora") else "alpha/r"
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {c.get('base_model_name_or_path')}",
        "tags: [lora, text-to-lora, t2l]",
        "---",
        "",
        f"# {m.get('name') or 'T2L adapter'}",
        "",
        "A LoRA adapter generated by [t2l](https://pypi.org/project/t2lcli/) (Text-to-LoRA) from a task description.",
        "",
        "| field | value |",
        "|---|---|",
    ]
    desc = str(m.get("description", "")).replace("|", "\\|").replace("\n", " ")
    rows = [
        ("description", desc),
        ("base model", c.get("base_model_name_or_path")),
        ("rank r", c.get("r")),
        ("lora_alpha", c.get("lora_alpha")),
        ("use_rslora", c.get("use_rslora")),
        ("scaling", f"{adapter.scaling:.6g} ({rs})"),
        ("strength multiplier (--scale)", m.get("scale", 1.0)),
        ("target modules", ", ".join(adapter.modules())),
        ("checkpoint", m.get("checkpoint")),
        ("checkpoint sha256", m.get("checkpoint_sha256")),
        ("tool", f"t2l {m.get('tool_version', __version__)}"),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    lines += ["", "Load it with peft:", "", "```python", "from peft import PeftModel",
              "model = PeftModel.from_pretrained(base_model, 'THIS_FOLDER')", "```", ""]
    return "\n".join(lines)


def save_adapter(
    adapter: Adapter, out_dir: Path | str, force: bool = False, dtype: torch.dtype | None = None, card_extra: str = ""
) -> Path:
    """Write a PEFT adapter folder atomically (see `write_adapter`). Returns the folder."""
    write_adapter(adapter, out_dir, force, dtype, card_extra)
    return Path(out_dir)


def write_adapter(
    adapter: Adapter, out_dir: Path | str, force: bool = False, dtype: torch.dtype | None = None, card_extra: str = ""
) -> str:
    """Write a PEFT adapter folder atomically (temporary folder + rename): the one PEFT writer. Returns the sha256 of
    the adapter_model.safetensors written (hashed from the bytes in memory: the adapter's id, as `adapter_sha256`).

    `card_extra` is appended to the model card (README.md) as it is.

    Raises:
        OutputExistsError: the folder exists and `force` is False.
    """
    from t2lcli.engine.atomic import write_safetensors_sha256

    out_dir = Path(out_dir)
    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in sorted(adapter.tensors.items())}
    meta = {**adapter.meta, "tool_version": adapter.meta.get("tool_version", __version__)}
    with atomic_dir(out_dir, force=force) as tmp:
        digest = write_safetensors_sha256(tensors, tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(adapter.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        card = model_card(Adapter(adapter.config, tensors, meta)) + card_extra
        (tmp / "README.md").write_text(card, encoding="utf-8", errors="replace")
        (tmp / "t2l_adapter.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n", encoding="utf-8",
                                              errors="replace")
    return digest


# ----------------------------------------------------------- scale folding and provenance (shared by merge and export)


def folded(adapter: Adapter, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, s·B) in float32 for one module: the effective scale folded into B."""
    a = adapter.tensors[f"{prefix}.lora_A.weight"].float()
    b = adapter.tensors[f"{prefix}.lora_B.weight"].float() * adapter.scaling
    return a, b


def scale_one_config(r: int, target_modules: list[str], base_model: str | None) -> dict[str, Any]:
    """adapter_config.json for an adapter whose scale is folded in: lora_alpha = r (an integer), no rsLoRA."""
    cfg = peft_config(r, r, target_modules, base_model, use_rslora=False)
    cfg["lora_alpha"] = int(r)
    return cfg


def fold_scale(adapter: Adapter) -> Adapter:
    """The same ΔW with the effective scale folded into B and a scale-1.0 config (lora_alpha=r, use_rslora=false)."""
    tensors: dict[str, torch.Tensor] = {}
    for p in adapter.prefixes():
        a, b = folded(adapter, p)
        tensors[f"{p}.lora_A.weight"], tensors[f"{p}.lora_B.weight"] = a.contiguous(), b.contiguous()
    cfg = {**adapter.config, **scale_one_config(adapter.r, adapter.modules(), adapter.config.get("base_model_name_or_path"))}
    meta = {**adapter.meta, "source_scaling": adapter.scaling}
    return Adapter(cfg, tensors, meta)


def provenance_section(prov: dict[str, Any]) -> str:
    lines = ["## Provenance", ""]
    for k, v in prov.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"- **{k}**:")
            for item in v:
                lines.append("  - " + ", ".join(f"{ik}: {iv}" for ik, iv in item.items() if iv is not None))
        elif v is not None:
            lines.append(f"- **{k}**: {v}")
    lines += ["", "```json", json.dumps(prov, indent=2, ensure_ascii=False, default=str), "```", ""]
    return "\n".join(lines)


def write_peft(adapter: Adapter, out_dir: Path, force: bool, prov: dict[str, Any], extra_card: str = "") -> Path:
    """A PEFT folder (atomic) whose README is the adapter card plus provenance; `prov` is kept as meta["merge"]."""
    meta = {**adapter.meta, "tool_version": __version__, "merge": prov}
    return save_adapter(Adapter(adapter.config, adapter.tensors, meta), out_dir, force, card_extra="\n" + extra_card + provenance_section(prov))


def load_adapter(path: Path | str, device: str = "cpu") -> Adapter:
    """Read and validate a PEFT LoRA folder; every problem is reported in one error.

    Raises:
        AdapterFormatError: missing files, unreadable JSON/safetensors, wrong shapes or ranks, NaN/Inf values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for p in (path, cfg_path, w_path):
        check_readable(p, "adapter file" if p != path else "adapter folder")
    if not path.is_dir():
        raise AdapterFormatError(f"adapter folder not found: {path}", hint="pass a folder written by `t2l generate`")
    problems: list[str] = []
    config: dict[str, Any] = {}
    config_read = False
    if not cfg_path.is_file():
        problems.append(f"missing {CONFIG_NAME}")
    else:
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
            config_read = isinstance(config, dict)
            if not config_read:
                problems.append(f"{CONFIG_NAME} is not a JSON object")
                config = {}
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{CONFIG_NAME} is not valid JSON ({exc})")
        except RecursionError:
            problems.append(f"{CONFIG_NAME} is not valid JSON (nested too deeply)")
    tensors: dict[str, torch.Tensor] = {}
    weights_read = False
    if not w_path.is_file():
        problems.append(f"missing {WEIGHTS_NAME}" + (" (adapter_model.bin is not read: pickle)" if (path / "adapter_model.bin").exists() else ""))
    else:
        try:
            tensors = load_file(str(w_path), device=device)
            weights_read = True
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            problems.append(f"{WEIGHTS_NAME} is not a valid safetensors file ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})")
    if config_read:
        peft_type = config.get("peft_type", "LORA")
        if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
            problems.append(f"peft_type is {show_key(peft_type)}, only LORA is supported")
        r = config.get("r")
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            problems.append(f"r must be a positive integer, got {show_value(r)}")
            r = None
        alpha = config.get("lora_alpha", 1)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
            problems.append(f"lora_alpha must be a number (finite), got {show_value(alpha)}")
        base = config.get("base_model_name_or_path")
        if base is not None and not isinstance(base, str):
            problems.append(f"base_model_name_or_path must be a string, got {show_value(base)}")
        tm = config.get("target_modules")
        if tm is not None and not isinstance(tm, (list, str)):
            problems.append(f"target_modules must be a list of names, got {show_value(tm)}")
    else:
        r = None
    if weights_read:  # a missing or unreadable file is already one problem; "no tensors" would repeat it
        scaling = effective_scaling(config) if config_read and r is not None and not problems else None
        problems += _check_tensors(tensors, r, scaling)
    if problems:
        raise AdapterFormatError(format_problems(f"invalid adapter {path}", problems))
    return Adapter(config, tensors, read_adapter_meta(path))


def read_adapter_meta(path: Path | str) -> dict[str, Any]:
    """The t2l card metadata (`t2l_adapter.json`) of an adapter folder; {} when absent or unreadable."""
    f = Path(path) / "t2l_adapter.json"
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, OSError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_tensors(tensors: dict[str, torch.Tensor], r: int | None, scaling: float | None = None) -> list[str]:
    """Problems of the LoRA tensors; with `scaling`, also a ΔW = scaling · B @ A that overflows float32 (finite
    factors whose product is not: what a merge or a forward would compute)."""
    problems: list[str] = []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            problems.append(f"unexpected tensor key {key}")
            continue
        pairs.setdefault(key[: -len(".lora_A.weight")], {})[m.group("ab")] = t
    if not tensors and not problems:
        problems.append("the adapter holds no tensors")
    for prefix, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            problems.append(f"{prefix}: lora_{'B' if 'A' in ab else 'A'} is missing")
            continue
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2:
            problems.append(f"{prefix}: lora_A/lora_B must be 2-D, got {tuple(a.shape)} / {tuple(b.shape)}")
            continue
        if 0 in a.shape or 0 in b.shape:
            problems.append(f"{prefix}: empty tensor lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)}")
            continue
        if a.shape[0] != b.shape[1]:
            problems.append(f"{prefix}: rank mismatch lora_A {tuple(a.shape)} vs lora_B {tuple(b.shape)}")
        elif r is not None and a.shape[0] != r:
            problems.append(f"{prefix}: rank {a.shape[0]} differs from r={r} in the config")
        if a.dtype not in _DTYPES or b.dtype not in _DTYPES:
            names = "/".join(str(t.dtype).replace("torch.", "") for t in (a, b))
            problems.append(f"{prefix}: tensors must be float32, float16, bfloat16 or float64, got {names}")
        elif not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            problems.append(f"{prefix}: contains NaN or Inf")
        elif scaling is not None and a.shape[0] == b.shape[1] and _delta_overflows(a, b, scaling):
            problems.append(f"{prefix}: scaling · lora_B @ lora_A overflows float32 (ΔW would be Inf)")
    return problems


def _delta_overflows(a: torch.Tensor, b: torch.Tensor, scaling: float) -> bool:
    """Does scaling · B @ A leave float32's range? |ΔW_ij| <= |scaling| · r · max|A| · max|B|, so the product is
    computed (in float64) only when that bound does not already rule an overflow out."""
    limit = torch.finfo(torch.float32).max
    bound = abs(scaling) * a.shape[0] * float(a.abs().max()) * float(b.abs().max())
    if bound <= limit:
        return False
    return bool((scaling * (b.double() @ a.double())).abs().max() > limit)
