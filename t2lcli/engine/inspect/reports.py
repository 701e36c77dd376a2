"""`t2l inspect PATH`: recognise a path (PEFT adapter, GGUF export, T2L checkpoint) and describe it.

ΔW = s·B@A is never materialised: per-block singular values come from the r×r core of two thin QRs, so a Llama-8B
adapter (64 blocks of 4096×4096) inspects in a blink.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.checkpoint import SHIPPED, resolve_checkpoint
from t2lcli.errors import InputError

_LAYER = re.compile(r"\.layers\.(\d+)\.")

Blocks = dict[str, tuple[torch.Tensor, torch.Tensor]]  # prefix -> (A [r, d_in], s·B [d_out, r])


def kind_of(path: Path) -> str:
    """'adapter', 'gguf-adapter' or 'checkpoint'.

    Raises:
        InputError: the path is none of these (what was expected is said).
    """
    if (path / "adapter_model.safetensors").is_file() and not (path / "hypermod.pt").exists():
        return "adapter"
    if (path / "t2l_config.json").is_file() or (path / "hypermod.pt").is_file():
        return "checkpoint"
    if (path / "adapter.gguf").is_file():
        return "gguf-adapter"
    if path.is_file():
        raise InputError(f"{path} is a file; t2l inspect reads folders",
                         hint="pass an adapter folder (adapter_config.json + adapter_model.safetensors), a checkpoint folder, or 'profile NAME'")
    raise InputError(
        f"{path} is not an adapter or a checkpoint: expected adapter_model.safetensors (PEFT adapter), adapter.gguf "
        "(t2l merge --export llamacpp/ollama), or t2l_config.json / hypermod.pt (T2L checkpoint)",
        hint="or inspect a profile: t2l inspect profile NAME",
    )


def _exists_or_hub(p: str) -> bool:
    """An owner/repo/folder spelling that names no local path: a checkpoint on the hub."""
    return not Path(p).exists() and not p.startswith((".", "/", "~")) and p.count("/") >= 2


def inspect_paths(paths: list[str]) -> dict[str, Any] | list[dict[str, Any]]:
    """One report per path (a dict for one path, a list for several)."""
    reports = []
    for p in paths:
        if _exists_or_hub(p):
            reports.append(inspect_checkpoint(Path(p)))  # owner/repo/folder on the hub
            continue
        path = Path(p)
        if not path.exists() and p in SHIPPED:  # `t2l inspect default`, as --checkpoint default everywhere else
            path = resolve_checkpoint(p)
        if not path.exists():
            raise InputError(f"not found: {p}", hint="pass an adapter folder, a checkpoint folder, 'default', or 'profile NAME'")
        kind = kind_of(path)
        if kind == "adapter":
            reports.append(inspect_adapter(path))
        elif kind == "gguf-adapter":
            reports.append(inspect_gguf(path))
        else:
            reports.append(inspect_checkpoint(path))
    return reports[0] if len(reports) == 1 else reports


def _blocks(adapter: Any) -> Blocks:
    """prefix -> (A [r, d_in], s·B [d_out, r]) in float32, so that ΔW = B' @ A."""
    s = adapter.scaling
    return {p: (adapter.tensors[f"{p}.lora_A.weight"].float(), adapter.tensors[f"{p}.lora_B.weight"].float() * s) for p in adapter.prefixes()}


def singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of b @ a (b [m, r], a [r, n]) from the r×r core of thin QRs: BA = Qb (Rb Raᵀ) Qaᵀ."""
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(rb @ ra.T).float()


def effective_rank(s: torch.Tensor) -> float:
    """Entropy effective rank exp(H(s/Σs)) (Roy & Vetterli, 2007): r for a flat spectrum, 1 for a single direction."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _module_and_layer(prefix: str) -> tuple[str, int]:
    """(module name, layer index or -1) of a PEFT key prefix."""
    m = _LAYER.search(prefix + ".")
    return prefix.rsplit(".", 1)[1], int(m.group(1)) if m else -1


def inspect_adapter(path: Path) -> dict[str, Any]:
    """Everything about a PEFT LoRA folder: config, scale, per-layer/module ΔW norms and ranks, card, verdict."""
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(path)
    rows: list[dict[str, Any]] = []
    zero_blocks = 0
    total_sq = 0.0
    for prefix, (a, b) in _blocks(ad).items():
        mod, layer = _module_and_layer(prefix)
        s = singular_values(a, b)
        norm = float(s.pow(2).sum().sqrt())
        total_sq += norm**2
        tol = float(s.max()) * 1e-4 if float(s.max()) > 0 else 0.0
        if not bool((ad.tensors[f"{prefix}.lora_B.weight"] != 0).any()):
            zero_blocks += 1
        rows.append({"module": mod, "layer": layer, "norm": round(norm, 6), "effective_rank": round(effective_rank(s), 3),
                     "rank": int((s > tol).sum()) if tol > 0 else 0, "top_singular_value": round(float(s.max()), 6)})
    rows.sort(key=lambda r: (r["layer"], ad.modules().index(r["module"]) if r["module"] in ad.modules() else 99, r["module"]))
    per_module: dict[str, Any] = {}
    for mod in dict.fromkeys(r["module"] for r in rows):
        mine = [r for r in rows if r["module"] == mod]
        norms = [r["norm"] for r in mine]
        per_module[mod] = {
            "layers": len(mine), "mean_norm": round(sum(norms) / len(norms), 6), "min_norm": min(norms), "max_norm": max(norms),
            "mean_effective_rank": round(sum(r["effective_rank"] for r in mine) / len(mine), 3),
            "zero_layers": [r["layer"] for r in mine if r["norm"] == 0],
        }
    n = len(rows)
    if zero_blocks == n:
        verdict = {"no_op": True, "message": "NO-OP: every lora_B is all zeros, so ΔW = 0 and the adapter changes nothing"}
    elif zero_blocks:
        verdict = {"no_op": False, "message": f"partial: {zero_blocks} of {n} blocks have lora_B = 0 (those layers are unchanged)"}
    else:
        verdict = {"no_op": False, "message": f"live: ΔW ≠ 0 in all {n} blocks (total ‖ΔW‖_F = {math.sqrt(total_sq):.4g})"}
    c = ad.config
    n_params = sum(t.numel() for t in ad.tensors.values())
    return {
        "kind": "peft-adapter",
        "path": str(path),
        "base_model": c.get("base_model_name_or_path"),
        "r": ad.r,
        "lora_alpha": c.get("lora_alpha"),
        "use_rslora": bool(c.get("use_rslora")),
        "effective_scale": ad.scaling,
        "scale_rule": "alpha/sqrt(r) (rsLoRA)" if c.get("use_rslora") else "alpha/r",
        "target_modules": ad.modules(),
        "n_layers": ad.n_layers(),
        "dtype": sorted({str(t.dtype).replace("torch.", "") for t in ad.tensors.values()}),
        "parameters": n_params,
        "bytes": sum(t.numel() * t.element_size() for t in ad.tensors.values()),
        "modules_to_save": c.get("modules_to_save"),
        "use_dora": bool(c.get("use_dora")),
        "description": ad.meta.get("description"),
        "provenance": {k: v for k, v in ad.meta.items() if k != "description"},
        "model_card": (path / "README.md").is_file(),
        "delta_w": {"total_norm": round(math.sqrt(total_sq), 6), "per_module": per_module, "per_layer": rows},
        "verdict": verdict,
    }


def inspect_gguf(path: Path) -> dict[str, Any]:
    """A GGUF LoRA export (t2l merge --export llamacpp|ollama): its header keys and tensor count."""
    info = _gguf_info(path / "adapter.gguf")
    meta = {}
    if (path / "t2l_adapter.json").is_file():
        try:
            meta = json.loads((path / "t2l_adapter.json").read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
    return {"kind": "gguf-adapter", "path": str(path), **info, "modelfile": (path / "Modelfile").is_file(),
            "description": meta.get("description"), "provenance": {k: v for k, v in meta.items() if k != "description"}}


def _gguf_info(file: Path) -> dict[str, Any]:
    """The GGUF header fields inspect and compat report (type, adapter type, arch, alpha, tensor count)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(file))
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"cannot read {file} as GGUF: {exc}") from None

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode("utf-8", "replace") if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value.tolist()[0]

    return {"gguf_type": field("general.type"), "adapter_type": field("adapter.type"), "arch": field("general.architecture"),
            "lora_alpha": field("adapter.lora.alpha"), "tensors": len(reader.tensors)}


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """A native or official T2L checkpoint: variant, size, encoder, base shapes, module order, provenance."""
    from t2lcli.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(path))
    d = ckpt.describe()
    frozen = sum(p.numel() for p in ckpt.hypernet.parameters() if not p.requires_grad)
    return {
        "kind": f"t2l-checkpoint ({ckpt.format})",
        **d,
        "module_order": list(ckpt.config.target_modules),
        "frozen_parameters": frozen,
        "base_shapes": {m: {"d_in": s.d_in, "d_out": s.d_out, "path": s.path} for m, s in ckpt.shape.modules.items()},
        "adapter_parameters": ckpt.config.n_layers * sum(ckpt.config.r * (i + o) for i, o in ckpt.config.module_dims.values()),
    }
