"""What the trainer optimises, and where it starts: the hypernetwork comes from `build_checkpoint`; mode lora trains
one `FixedLoRA` shared by every example; `train.init_from` warm-starts either from a shipped checkpoint or adapter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2lcli.errors import DataError


class FixedLoRA(nn.Module):
    """One learned LoRA shared by every example (the multi-task / oracle baseline); ignores the task embedding."""

    def __init__(self, n_layers: int, dims: dict[str, list[int]], r: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.modules_order = list(dims)
        self.A = nn.ParameterDict(
            {m: nn.Parameter((torch.rand(n_layers, r, d[0], generator=g) * 2 - 1) / math.sqrt(d[0])) for m, d in dims.items()}
        )
        self.B = nn.ParameterDict({m: nn.Parameter(torch.zeros(n_layers, d[1], r)) for m, d in dims.items()})

    def forward(self, emb: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        n = emb.shape[0]
        return {m: (self.A[m].expand(n, *self.A[m].shape), self.B[m].expand(n, *self.B[m].shape)) for m in self.modules_order}


def fresh_lora(shape: Any, r: int, seed: int) -> FixedLoRA:
    """A freshly initialised `FixedLoRA` for every module of a base's `shape`."""
    dims = {m: [s.d_in, s.d_out] for m, s in shape.modules.items()}
    return FixedLoRA(shape.n_layers, dims, r, seed)


def warm_start_adapter(net: nn.Module, spec: str, r: int, paths: dict[str, str], n_layers: int) -> dict[str, Any]:
    """Load a PEFT adapter (same rank and modules) into a `FixedLoRA` as fp32 master weights. Returns what provenance
    records about the start point."""
    from t2lcli.engine.adapters import load_adapter, tensors_sha256
    from t2lcli.engine.checkpoint import load_strict

    ad = load_adapter(spec)
    if ad.r != r:
        raise DataError(f"train.init_from {spec}: rank {ad.r} differs from hypernet.r={r}")
    state = {}
    try:
        for m, path in paths.items():
            for name, key in (("A", "lora_A"), ("B", "lora_B")):
                state[f"{name}.{m}"] = torch.stack([ad.tensors[f"base_model.model.{path.format(l=layer)}.{key}.weight"].float()
                                                    for layer in range(n_layers)])
    except KeyError as exc:
        raise DataError(f"train.init_from {spec} lacks {exc.args[0]}", hint="the adapter must target the recipe's base and modules") from None
    load_strict(net, state, str(spec))
    raw = ad.meta.get("training")
    training: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return {"path": str(spec), "sha256": tensors_sha256(Path(spec) / "adapter_model.safetensors"),
            "steps": training.get("steps"), "seconds": training.get("seconds"), "dtype": "fp32 master weights from the adapter's tensors"}


def warm_start_checkpoint(net: nn.Module, spec: str, mine: Any, encoder_model: str) -> dict[str, Any]:
    """Load a T2L checkpoint's hypernetwork into `net`; its hypernetwork config (`mine` is the recipe's) and encoder
    must match. Weights become fp32 master weights (a bf16 checkpoint is upcast). Returns what provenance records."""
    from t2lcli.engine.checkpoint import load_checkpoint, load_strict

    ck = load_checkpoint(spec)
    theirs = ck.config
    problems = [f"{k}: checkpoint {getattr(theirs, k)!r}, recipe {getattr(mine, k)!r}"
                for k in ("variant", "latent", "head_in", "r", "lora_alpha", "target_modules", "use_rslora")
                if getattr(theirs, k) != getattr(mine, k)]
    if ck.encoder.model != encoder_model:
        problems.append(f"encoder: checkpoint {ck.encoder.model!r}, recipe {encoder_model!r}")
    if problems:
        raise DataError(f"train.init_from {spec} does not match the recipe: " + "; ".join(problems),
                        hint="set the recipe's hypernet section and encoder to the checkpoint's")
    load_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in ck.hypernet.state_dict().items()}, str(spec))
    prov = ck.provenance if isinstance(ck.provenance, dict) else {}
    return {"path": str(spec), "sha256": ck.sha256, "steps": prov.get("steps"), "seconds": prov.get("seconds"),
            "train_tasks": len(prov.get("train_tasks") or []), "dtype": "fp32 master weights from the checkpoint's tensors"}
