"""Apply LoRA factors to a loaded model without peft and without copying weights: forward hooks that add
`scale · (x Aᵀ) Bᵀ` to chosen Linear outputs. Used for in-memory adapters (generate/eval) and for training,
where A/B carry a batch dimension (one LoRA per example) and gradients flow into the hypernetwork.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_LAYER_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")


@dataclass
class HookHandle:
    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _make_hook(a: torch.Tensor, b: torch.Tensor, scale: float, dropout: float = 0.0) -> Any:
    """a: [r, d_in] or [B, r, d_in]; b: [d_out, r] or [B, d_out, r]."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if dropout:
            x = torch.nn.functional.dropout(x, dropout, True)
        aa, bb = a.to(x.dtype), b.to(x.dtype)
        if aa.dim() == 2:
            delta = (x @ aa.T) @ bb.T
        else:  # per-example factors; x: [B, T, d_in]
            delta = torch.einsum("btr,bor->bto", torch.einsum("btd,brd->btr", x, aa), bb)
        return output + scale * delta.to(output.dtype)

    return hook


def apply_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float, dropout: float = 0.0) -> HookHandle:
    """`factors` maps a module path (e.g. `model.layers.3.self_attn.q_proj`) to (A, B). `dropout` > 0 (training
    only) drops LoRA inputs, as peft's lora_dropout does."""
    handle = HookHandle()
    named = dict(model.named_modules())
    for path, (a, b) in factors.items():
        mod = named.get(path)
        if mod is None:
            handle.remove()
            raise KeyError(f"model has no module {path}")
        handle.handles.append(mod.register_forward_hook(_make_hook(a, b, scale, dropout)))
    return handle


def adapter_factors(adapter: Any, device: Any = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in adapter.tensors.items():
        m = _LAYER_KEY.match(key)
        if m:
            pairs.setdefault(m.group("path"), {})[m.group("ab")] = t.to(device) if device is not None else t
    return {p: (ab["A"], ab["B"]) for p, ab in pairs.items()}


def apply_adapter(model: nn.Module, adapter: Any) -> HookHandle:
    """Hook an `Adapter` onto a model (bare transformers model, not peft-wrapped); scale = the adapter's scaling."""
    device = next(model.parameters()).device
    return apply_factors(model, adapter_factors(adapter, device), adapter.scaling)
