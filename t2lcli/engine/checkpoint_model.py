"""The loaded-checkpoint model shared by both loaders (native folders in `checkpoint`, SakanaAI folders in `official`).

It sits below both, so neither loader imports the other's module for its types: `checkpoint.load_checkpoint` dispatches
to `official.load_official`, and both return a `T2LCheckpoint` built with `materialize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.base_model import ModelShape
from t2lcli.engine.encoder import EncoderSpec
from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig
from t2lcli.errors import CheckpointError, format_problems


@dataclass
class T2LCheckpoint:
    """A loaded hypernetwork with everything needed to embed descriptions and write adapters."""

    hypernet: HyperLoRA
    encoder: EncoderSpec
    base_model: str
    shape: ModelShape
    path: Path | None = None
    sha256: str = ""
    format: str = "native"
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> HyperNetConfig:
        return self.hypernet.config

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "path": str(self.path) if self.path else None,
            "format": self.format,
            "variant": c.variant,
            "parameters": self.hypernet.n_params(),
            "latent": c.latent,
            "head_in": c.head_in,
            "r": c.r,
            "lora_alpha": c.lora_alpha,
            "use_rslora": c.use_rslora,
            "scaling": c.scaling,
            "target_modules": list(c.target_modules),
            "n_layers": c.n_layers,
            "module_dims": c.module_dims,
            "base_model": self.base_model,
            "encoder": self.encoder.to_dict(),
            "sha256": self.sha256,
            "provenance": self.provenance,
        }


def state_problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Every missing/unexpected key, shape mismatch and non-finite tensor (nothing is loaded)."""
    problems = [f"missing key {k}" for k in expected if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} != expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems += [f"{k}: dtype {str(v.dtype).replace('torch.', '')} is not a floating-point type"
                 for k, v in state.items() if k in expected and not v.is_floating_point()]
    problems += [f"{k}: contains NaN or Inf" for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
    return problems


def _all_finite(t: torch.Tensor) -> bool:
    """NaN/Inf propagate into the sum, which is ~10x faster than isfinite().all() on large tensors; an overflowing sum
    of finite values falls back to the exact check. Types without these kernels (float8) are checked as float32."""
    try:
        return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
    except (RuntimeError, NotImplementedError):
        return bool(torch.isfinite(t.float()).all())


def _raise_problems(where: str, problems: list[str]) -> None:
    if problems:
        shown = problems[:25] + ([f"… and {len(problems) - 25} more"] if len(problems) > 25 else [])
        raise CheckpointError(format_problems(f"checkpoint {where} does not match its config", shown))


def materialize(cfg: HyperNetConfig, state: dict[str, torch.Tensor], where: str, problems: list[str] | None = None) -> HyperLoRA:
    """Build the module on the meta device and adopt `state`'s tensors (no initialisation, no copy).

    Loading is strict: `problems` (e.g. from config cross-checks) and every key/shape problem are reported together.
    The tensors are used as they are (dtype included), so a memory-mapped state dict stays memory-mapped.
    """
    from t2lcli.engine.fastload import meta_device

    with meta_device(skip=((HyperLoRA, "reset_heads"),)):
        net = HyperLoRA(cfg)
    _raise_problems(where, list(problems or []) + state_problems(net.state_dict(), state))
    net.load_state_dict(state, strict=True, assign=True)
    net.restore_buffers()
    return net.eval()


def load_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict, reporting every missing/unexpected key and shape mismatch at once (train's warm start)."""
    expected = net.state_dict()
    _raise_problems(where, state_problems(expected, state))
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
