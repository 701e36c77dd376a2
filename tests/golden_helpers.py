"""Checks of a loaded T2L checkpoint against the reference outputs in ../shared/golden (shared by the tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from numeric import assert_close
from safetensors.torch import load_file

from t2lcli.engine.hypernet import lora_state_dict


def golden_check(ckpt, folder: Path) -> None:
    """z and every LoRA factor of the golden case's embedding equal the reference's (tolerances of tests/numeric.py)."""
    g = load_file(str(folder / "golden.safetensors"))
    with torch.no_grad():
        z = ckpt.hypernet.encode(g["embedding"])
        assert_close(z, g["z"], depth=10, msg="z")  # golden: made by the official code on another CPU
        fac = {m: ckpt.hypernet.generate_module(z, m) for m in ckpt.config.target_modules}
    tensors = lora_state_dict({m: s.path for m, s in ckpt.shape.modules.items()}, fac)
    golden = {k: v for k, v in g.items() if ".lora_" in k}
    assert set(tensors) == set(golden)
    for k, v in golden.items():
        assert_close(tensors[k], v, depth=20, msg=k)
