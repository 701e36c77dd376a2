"""oneDNN weight packing for `kernels.KLinear`: the packed layout, packing in parts, and handing a dropped weight's
memory pages back to the OS (see `t2lcli.engine.kernels` for when a linear packs)."""

from __future__ import annotations

import torch

# Packing holds both layouts of one weight (or part) for a moment, which is what a process's peak RSS sees; so a module
# packs whole only weights up to 1/PACK_SHARE of its own parameter bytes (at least PACK_MIN_BYTES), larger ones in parts
# of that size: the peak grows by under ~6%. In parts: the hypernetwork heads (19 MiB of a 34 MiB default net; the
# Llama-8B shapes' 512 MiB q head: on a Zen 4 EPYC oneDNN packed ran it 1.2x faster than on the plain weight)
PACK_SHARE = 16
PACK_MIN_BYTES = 4 << 20
PACK_ROWS = 32  # the row count oneDNN's packed layout is chosen for (the layout barely depends on it; results do not)


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """w [N, K] in oneDNN's blocked layout for `gemm(..., "onednn")` (a new tensor; `.to_dense()` gives w back)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS)


def release_pages(t: torch.Tensor) -> bool:
    """Hand the memory pages of a tensor about to be dropped back to the OS (MADV_DONTNEED on the whole pages inside
    it), where dropping it alone would not: a tensor read by safetensors' `load_file` lies in one private mapping of the
    whole file, which goes only with its last tensor; a freed heap chunk stays in the process (glibc returns only the
    heap's top), and a packed weight a little larger than the plain one cannot reuse it. Without this, packing the
    Llama-8B shapes' bf16 encoder raised a cold `t2l generate`'s peak RSS by 100-280 MiB. Only when nothing else uses
    the tensor's storage (its contents are never read again); pages shared with a neighbour are kept. Linux only;
    returns whether pages were released."""
    if t.device.type != "cpu" or not storage_unshared(t):
        return False
    return release_range(t.data_ptr(), t.numel() * t.element_size())


def storage_unshared(t: torch.Tensor) -> bool:
    """Nothing but `t` holds its storage (2: the tensor's own reference and this call's storage object)."""
    return bool(torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2)


def release_range(start: int, nbytes: int) -> bool:
    """MADV_DONTNEED on the whole pages inside [start, start + nbytes) (Linux only): their contents are gone."""
    import ctypes
    import mmap
    import sys

    if sys.platform != "linux":
        return False
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + nbytes) // page * page
    if hi - lo < page:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)) == 0  # MADV_DONTNEED
    except (OSError, AttributeError):
        return False


def part_rows(n: int, k: int, element_size: int, cap: int) -> int:
    """Output rows per packed part of an [n, k] weight whose parts may hold at most `cap` bytes each: n when the whole
    weight fits, else a multiple of 64 rows (at least 64) that fits."""
    if n * k * element_size <= cap:
        return n
    return max(64, cap // (k * element_size) // 64 * 64)
