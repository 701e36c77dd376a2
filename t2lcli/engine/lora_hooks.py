"""Apply LoRA factors to a loaded model without peft and without copying weights: forward hooks that add
`scale · (x Aᵀ) Bᵀ` to chosen Linear outputs. Used for in-memory adapters (generate/eval), for training, where A/B
carry a batch dimension (one LoRA per example) and gradients flow into the hypernetwork, and for serving, where each
row of a decode batch gets its own adapter (or none) and its own scale (`row_factors`).
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


def _make_hook(a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor, dropout: float = 0.0) -> Any:
    """a: [r, d_in] or [B, r, d_in]; b: [d_out, r] or [B, d_out, r]; scale: a number or one per row ([B])."""
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(-1, 1, 1)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if dropout:
            x = torch.nn.functional.dropout(x, dropout, True)
        aa, bb = a.to(x.device, x.dtype), b.to(x.device, x.dtype)  # no-ops unless the layer lives elsewhere (device_map)
        if aa.dim() == 2:
            delta = (x @ aa.T) @ bb.T
        else:  # per-example factors; x: [B, T, d_in]
            delta = torch.einsum("btr,bor->bto", torch.einsum("btd,brd->btr", x, aa), bb)
        if isinstance(scale, torch.Tensor):
            return output + scale.to(output.device, output.dtype) * delta.to(output.dtype)
        return output + scale * delta.to(output.dtype)

    return hook


def apply_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float | torch.Tensor,
                  dropout: float = 0.0) -> HookHandle:
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


def row_factors(rows: list[dict[str, tuple[torch.Tensor, torch.Tensor]] | None]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stack per-row adapters (`adapter_factors` dicts, None = no adapter) into batched [B, r, d_in] / [B, d_out, r]
    factors for `apply_factors`; a row without an adapter gets zeros, so it decodes exactly as the base model."""
    like = next((r for r in rows if r is not None), None)
    if like is None:
        return {}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, (a0, b0) in like.items():
        za, zb = torch.zeros_like(a0), torch.zeros_like(b0)
        a = torch.stack([r[path][0] if r is not None else za for r in rows])
        b = torch.stack([r[path][1] if r is not None else zb for r in rows])
        out[path] = (a, b)
    return out
