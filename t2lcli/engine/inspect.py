"""Reports for `t2l inspect`: recognise a path (adapter or checkpoint) and describe it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from t2lcli.errors import InputError


def inspect_adapter(path: Path) -> dict[str, Any]:
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(path)
    norms = {}
    ranks = {}
    zero_b = True
    for prefix in ad.prefixes():
        d = ad.delta(prefix)
        norms[prefix.removeprefix("base_model.model.")] = round(float(d.norm()), 6)
        s = torch.linalg.svdvals(d)
        ranks[prefix.removeprefix("base_model.model.")] = int((s > s[0] * 1e-3).sum()) if s[0] > 0 else 0
        if ad.tensors[f"{prefix}.lora_B.weight"].abs().max() > 0:
            zero_b = False
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in ad.tensors.values()})
    return {
        "kind": "peft-adapter",
        "path": str(path),
        "base_model": ad.config.get("base_model_name_or_path"),
        "r": ad.r,
        "lora_alpha": ad.config.get("lora_alpha"),
        "use_rslora": bool(ad.config.get("use_rslora")),
        "effective_scale": ad.scaling,
        "target_modules": ad.modules(),
        "n_layers": ad.n_layers(),
        "dtype": dtypes,
        "delta_w_norms": norms,
        "effective_rank": ranks,
        "description": ad.meta.get("description"),
        "provenance": {k: v for k, v in ad.meta.items() if k != "description"},
        "verdict": "NO-OP: every lora_B is zero" if zero_b else "live: the adapter changes the model",
    }


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    from t2lcli.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(path))
    return {"kind": f"t2l-checkpoint ({ckpt.format})", **ckpt.describe()}


def inspect_paths(paths: list[str]) -> dict[str, Any] | list[dict[str, Any]]:
    reports = []
    for p in paths:
        path = Path(p)
        if not path.exists() and not p.startswith((".", "/", "~")) and p.count("/") >= 2:
            reports.append(inspect_checkpoint(path))  # owner/repo/folder on the hub
            continue
        if not path.exists():
            raise InputError(f"not found: {p}", hint="pass an adapter folder, a checkpoint folder, or 'profile NAME'")
        if (path / "adapter_model.safetensors").exists() and not (path / "hypermod.pt").exists():
            reports.append(inspect_adapter(path))
        elif (path / "t2l_config.json").exists() or (path / "hypermod.pt").exists():
            reports.append(inspect_checkpoint(path))
        else:
            raise InputError(
                f"{p} is neither a PEFT adapter (adapter_model.safetensors) nor a T2L checkpoint (t2l_config.json or hypermod.pt)",
                hint="or inspect a profile: t2l inspect profile NAME",
            )
    return reports[0] if len(reports) == 1 else reports
