"""How the tests compare numbers, so that they pass on any x86 CPU (Intel AVX-512/AMX, AMD AVX2) and thread count.

The rule (every numeric comparison in tests/ follows one of the two):

1. **Bitwise** (`torch.equal`, byte-identical files) only where the code guarantees it: the same process or the same
   kernels on the same inputs (determinism across runs or processes), a copy, a dtype cast, a gather/permutation,
   a serialisation round trip, integer results. Such a check carries a `# bitwise: <why>` comment.
2. **Relative to the magnitude** (`assert_close`) wherever the two sides are the same math computed another way (a
   gathered vs. a full path, a merged weight vs. an adapter hook, our BERT vs. transformers', a golden reference made
   on another machine): BLAS/oneDNN/MKL pick other kernels (AVX2 vs. AVX-512 FMA, block sizes, thread splits), which
   reorders the sums. The error of a sum is relative to the size of its *terms*, not of the result (an element that
   cancels to ~0 keeps the absolute error of its ~300-sized terms), so the tolerance scales with the largest
   magnitude of the reference tensor, not element by element:

       max |got - want|  <=  depth * REL[dtype] * max |want|

   `REL` is about 1e-6 for float32 (eps 1.2e-7 times a few), 1e-2 for bfloat16; `depth` is how many reductions
   (matmuls, norms, softmaxes) lie between the inputs and the compared values, so a 2-layer tiny Llama's logits get
   more than one linear layer's output. A depth stays small enough that a real bug (a wrong scale, a missing offset,
   the wrong layer: changes of >= 1e-3 relative) fails the check; tests/test_numeric.py checks the helper itself.
"""

from __future__ import annotations

import os
import sys

import torch

REL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}

# conftest's tiny 2-layer Llama: per layer 2 RMSNorms, q/k/v/o, QK^T, softmax, ·V, gate/up/down (~11 reductions),
# then the final norm and the LM head: its logits are ~25 reductions deep
TINY_LLAMA_DEPTH = 25
# conftest's tiny 1-layer BERT: embeddings LayerNorm, q/k/v/o, QK^T, softmax, ·V, 2 LayerNorms, up/down, then pooling
TINY_BERT_DEPTH = 15


def rel_tol(dtype: torch.dtype = torch.float32, depth: int = 1) -> float:
    """The relative tolerance (to the largest magnitude) for `depth` reductions in `dtype`."""
    return depth * REL[dtype]


def max_rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (0 when both are all zero, inf when only `want` is)."""
    got, want = torch.as_tensor(got).detach(), torch.as_tensor(want).detach()
    diff = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    scale = float(want.double().abs().max()) if want.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def close(got: torch.Tensor, want: torch.Tensor, *, depth: int = 1, dtype: torch.dtype | None = None) -> bool:
    """`assert_close` as a predicate (for `assert not close(...)`: the values really differ)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape:
        return False
    return max_rel_diff(got, want) <= rel_tol(dtype or _lowest(got, want), depth)


def assert_close(got: torch.Tensor, want: torch.Tensor, *, depth: int = 1, dtype: torch.dtype | None = None, msg: str = "") -> None:
    """The same math computed another way: equal up to `depth` reductions' rounding, relative to max |want|.

    `dtype` defaults to the less precise of the two tensors' dtypes (float32 for anything else)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape, f"{msg}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    tol = rel_tol(dtype or _lowest(got, want), depth)
    err = max_rel_diff(got, want)
    _log(err, tol)
    assert err <= tol, f"{msg + ': ' if msg else ''}max |got - want| / max |want| = {err:.3g} > {tol:.3g} (depth {depth})"


def assert_rel_error(err: float, *, depth: int = 1, dtype: torch.dtype = torch.float32, msg: str = "") -> None:
    """An error already relative to the magnitude (e.g. from `max_rel_diff` over a masked part) within tolerance."""
    tol = rel_tol(dtype, depth)
    _log(err, tol)
    assert err <= tol, f"{msg + ': ' if msg else ''}relative error {err:.3g} > {tol:.3g} (depth {depth})"


def _log(err: float, tol: float) -> None:
    """`T2L_NUMERIC_LOG=file`: one line per comparison (`file:line error tolerance test-id`): `make test-kernels`
    reports the closest margin and reruns these tests under the other kernel configurations."""
    path = os.environ.get("T2L_NUMERIC_LOG")
    if path:
        caller = sys._getframe(2)
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno} {err:.3e} {tol:.3e} {test}\n")


def _lowest(*tensors: torch.Tensor) -> torch.dtype:
    dtypes = [t.dtype for t in tensors if t.dtype in REL]
    return max(dtypes, key=lambda d: REL[d]) if dtypes else torch.float32
