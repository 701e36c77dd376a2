"""Build modules without paying for initialisation: the meta device, minus the initialisers that are slow there.

Some random ops on meta tensors (`torch.nn.init.normal_`, `torch.rand(..., generator=...)`) route through
`torch._refs`, whose wrapper imports `torch._dynamo`: 2-5 s on 2 CPU cores, more than the whole cold `t2l generate`
budget. Modules built here are only shapes (their tensors are assigned from a state dict right after), so skipping
initialisers changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def meta_device(skip: tuple[tuple[type, str], ...] = ()) -> Iterator[None]:
    """`with meta_device(): net = Module(...)`, then `net.load_state_dict(state, assign=True)`.

    Args:
        skip: extra `(class, method)` initialisers to turn into no-ops meanwhile (e.g. `(HyperLoRA, "reset_heads")`).
    """
    saved_normal = torch.nn.init.normal_
    saved = [(cls, name, cls.__dict__[name]) for cls, name in skip]
    torch.nn.init.normal_ = _keep  # type: ignore[assignment]
    for cls, name, _ in saved:
        setattr(cls, name, _nothing)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.nn.init.normal_ = saved_normal
        for cls, name, fn in saved:
            setattr(cls, name, fn)


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _read_header(f: Any, size: int) -> tuple[dict[str, Any], int]:
    """(header, offset of the data) of an open safetensors file of `size` bytes. Raises ValueError when malformed."""
    import json
    import struct

    head = f.read(8)
    if len(head) != 8:
        raise ValueError("truncated safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, 100_000_000):
        raise ValueError("invalid safetensors header length")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("invalid safetensors header")
    return header, 8 + n


def stored_float_dtype(path: Any) -> torch.dtype | None:
    """The dtype of the first floating tensor of a safetensors file, from its header alone; None if unreadable."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            header, _ = _read_header(f, size)
    except (OSError, ValueError):
        return None
    for key, info in header.items():
        dt = SAFETENSORS_DTYPES.get(str(info.get("dtype"))) if key != "__metadata__" and isinstance(info, dict) else None
        if dt is not None and dt.is_floating_point:
            return dt
    return None


def load_safetensors_as(path: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read a safetensors file with plain reads, converting each floating tensor to `dtype` as it arrives.

    `safetensors.torch.load_file` memory-maps the file, so every page it touches counts in the process's RSS until
    the mapping goes: converting a 1.7 GB fp32 encoder to bf16 that way peaks at 2.7 GB. Read here, the peak is the
    converted weights plus the largest single tensor.

    Raises:
        ValueError: a malformed header or a tensor outside the file.
    """
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        header, base = _read_header(f, size)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            src = SAFETENSORS_DTYPES.get(info.get("dtype"))
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            if src is None or not 0 <= start <= end <= size - base:
                raise ValueError(f"tensor {key}: unsupported dtype or data outside the file")
            buf = torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            if f.readinto(buf.numpy().data) != end - start:
                raise ValueError(f"tensor {key}: truncated data")
            t = buf.view(src).reshape(shape)
            out[key] = t.to(dtype) if t.is_floating_point() else t
    return out
