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
