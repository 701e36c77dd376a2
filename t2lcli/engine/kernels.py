"""The CPU kernel behind every inference linear of the generate hot path (text encoder + hypernetwork).

torch's default fp32 GEMM (MKL) is far from the machine on some CPUs: on a 2-core AMD EPYC (AVX2) the Llama-8B
heads' skinny [32 x 2048] x [2048 x 65536] product ran 3-6x slower than oneDNN on the same, unpacked weight. So each
`KLinear` (an `nn.Linear` with the same parameters and state-dict keys) runs, in inference only, on one of:

  torch     `F.linear` (MKL or whatever torch was built with); always used for training (autograd) and off the CPU;
  onednn    `torch.ops.mkldnn._linear_pointwise` on the fp32 weight (packed in place where allowed, below);
  openblas  numpy's `matmul` (OpenBLAS) on zero-copy views of the tensors.

Policy `auto` (the default; profile key `kernel`) picks, per GEMM shape (rows rounded up to a power of two, K, N),
the fastest of them by a short measurement on the module's own weight, cached per machine fingerprint (CPU model and
flags, torch and numpy versions, torch threads) in `$T2L_HOME/kernels.json` (`t2lcli.engine.kernel_cache`); GEMMs
under `SMALL_FLOPS` stay on torch (nothing to gain, and tiny test models keep torch's bytes). A named policy forces
one kernel. Results agree within fp32 rounding whichever kernel runs (tests/test_kernels.py); the same kernel gives
the same bytes every run.
bf16 is never chosen here (it changes results beyond fp32 tolerance); a module already in bf16 (the encoder under
`dtype: auto` on a native-bf16 CPU) picks between torch's and oneDNN's bf16 GEMM the same way.

Packing (`t2lcli.engine.packing`): a `packable` module's linear (what a `Generator` runs: text encoder, hypernetwork)
that runs oneDNN has its weight reordered once into oneDNN's blocked layout *in place* (`KLinear.pack`: the plain weight
is dropped, one copy stays, `release_pages`); a weight over 1/PACK_SHARE of its module's bytes (the heads) packs in
parts of output rows, each that large at most, their plain pages handed back part by part (the peak RSS grows by one
part at most), the outputs side by side. oneDNN then skips reordering the weight on every call: on an Intel AMX Xeon
1.3-1.5x faster in fp32 and up to 2x in bf16 for a short description's rows, the same bytes as oneDNN on the plain
weight for 2+ rows (within fp32 rounding on any CPU: tests/test_kernels.py). `auto` times a packable module's oneDNN
candidate packed. Whatever needs the plain weight (state_dict, .to(), autograd) gets it back (`KLinear.unpack`).

Epilogues (`KLinear.fused(x, act, add)`): on oneDNN an activation or a residual sum is the GEMM's post-op (one op,
the output written once); on any other kernel, under autograd or off the CPU, the separate ops.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from t2lcli.engine.kernel_cache import (  # noqa: F401 - re-exported: kernels.cache_path() etc.
    GEMM_FLAGS,
    SCHEMA,
    cache_path,
    cpu_model_and_flags,
    fingerprint,
    fingerprint_key,
    read_cache,
    save_choice,
)
from t2lcli.engine.packing import (
    PACK_MIN_BYTES,
    PACK_ROWS,
    PACK_SHARE,
    pack_weight,
    part_rows,
    release_pages,
    release_range,
    storage_unshared,
)

KERNELS = ("torch", "onednn", "openblas")
# what `auto` measures: OpenBLAS runs its own thread pool next to torch's OpenMP one; interleaved with torch ops on a
# busy 2-core machine the two pools spun against each other (default warm generate ~10x slower), so it is forced-only
AUTO_KERNELS = ("torch", "onednn")
POLICIES = ("auto", *KERNELS)
SMALL_FLOPS = 1 << 21  # 2*M*K*N below this: torch (a MiniLM q/k/v/o over 15 tokens is ~4.4M)
MEASURE_FLOPS = 8e9  # a measurement uses at most this many FLOPs per call (rows capped), ~0.1-0.3 s on 2 cores


def available() -> list[str]:
    """The kernels this torch/numpy build can run."""
    out = ["torch"]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        out.append("onednn")
    try:
        import numpy  # noqa: F401

        out.append("openblas")
    except ImportError:  # pragma: no cover - numpy is a dependency of torch's CPU wheels in practice
        pass
    return out


# `KLinear.fused`'s epilogues: oneDNN applies them to the GEMM's output as post-ops (one op, the output written once);
# every other kernel runs the same functions after its GEMM
_ONEDNN_ACT = {"": ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "silu": ("swish", ""), "relu": ("relu", "")}
_TORCH_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu, "relu": F.relu}


def post(y: torch.Tensor, act: str = "", add: torch.Tensor | None = None) -> torch.Tensor:
    """The unfused epilogue: `act(y) + add` (each optional)."""
    if act:
        y = _TORCH_ACT[act](y)
    return y if add is None else y + add


def gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, kernel: str, act: str = "",
         add: torch.Tensor | None = None) -> torch.Tensor:
    """act(x [M, K] @ w[N, K]ᵀ (+ b)) (+ add [M, N]) on the CPU with the named kernel (no gradient); `torch-*` names
    run F.linear; a packed weight (`pack_weight`) runs on oneDNN whatever the name; on oneDNN the activation or the add
    is the GEMM's post-op (the same math up to fp32 rounding: the tanh GELU and SiLU differ from torch's by an ulp)."""
    if kernel == "onednn" or w.is_mkldnn:
        x = x.contiguous()
        if add is not None and not act and add.dtype == x.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(x, add.contiguous(), w, b, "add")
        attr, algorithm = _ONEDNN_ACT[act]
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)
        return post(y, "", add)
    if kernel == "openblas":
        import numpy as np

        y = torch.from_numpy(np.matmul(x.detach().numpy(), w.detach().numpy().T))
        return post(y.add_(b) if b is not None else y, act, add)
    return post(F.linear(x, w, b), act, add)


# ------------------------------------------------------------------------------------------------ stage timing

Call = tuple[str, int, int, int, str, float, nn.Module]  # (stage, M, K, N, kernel, seconds, module)
_TIMING: list[Call] | None = None


@contextmanager
def record() -> Iterator[list[Call]]:
    """Record every KLinear inference call (stage, M, K, N, kernel, seconds, module) in this block (for `t2l bench`)."""
    global _TIMING
    prev, _TIMING = _TIMING, []
    try:
        yield _TIMING
    finally:
        _TIMING = prev


class KLinear(nn.Linear):
    """`nn.Linear` whose inference forward on the CPU runs on the kernel its policy picks (see the module doc)."""

    policy = "torch"  # instance attribute once `configure` ran; the class default keeps training and tests on torch
    stage = ""
    packable = False  # may its weight be packed in place when it runs oneDNN (`configure(..., packable=True)`)
    pack_max_bytes = 0  # ... if it is at most this large (configure: PACK_SHARE, PACK_MIN_BYTES)
    packed: torch.Tensor | None = None  # the weight in oneDNN's layout once packed (`weight` is then a meta tensor)
    # a weight over pack_max_bytes packs in parts of output rows instead: (end row, packed part, its bias) each
    parts: list[tuple[int, torch.Tensor, torch.Tensor | None]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)

    def fused(self, x: torch.Tensor, act: str = "", add: torch.Tensor | None = None) -> torch.Tensor:
        """`act(self(x)) + add` (act: "", "gelu", "gelu_tanh", "silu" or "relu"; add: the output's shape): one call on
        oneDNN (post-ops), the separate ops on any other kernel and under autograd."""
        if (self.packed is not None or self.parts is not None) and (torch.is_grad_enabled() or x.device.type != "cpu"):
            self.unpack()  # autograd or another device: the plain weight again
        if self.parts is not None:
            return post(self._forward_parts(x), act, add)
        w = self.weight if self.packed is None else self.packed
        if self.packed is None and ((self.policy == "torch" and _TIMING is None) or torch.is_grad_enabled() or x.device.type != "cpu"):
            return post(F.linear(x, w, self.bias), act, add)
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        label = ""
        if self.packed is not None:  # packed: oneDNN, whatever the dtype
            kernel, label = "onednn", "-packed" + _dtype_label(w.dtype)
        elif x.dtype == w.dtype == torch.float32:
            kernel = self.policy if self.policy != "auto" else self._choose(x2.shape[0], w)
        elif x.dtype == w.dtype == torch.bfloat16:  # a bf16 encoder (`dtype: auto` on native bf16): torch's or oneDNN's bf16
            label = "-bf16"
            if self.policy == "auto":
                kernel = self._choose(x2.shape[0], w)
            else:
                kernel = "onednn" if self.policy == "onednn" else "torch"
        elif _TIMING is None:
            return post(F.linear(x, w, self.bias), act, add)
        else:
            kernel, label = "torch", f"-{str(w.dtype).removeprefix('torch.')}"
        if kernel == "onednn" and self.packable and self.packed is None and self._pack_now(x2.shape[0], w):
            self.pack()
            if self.parts is not None:
                return post(self._forward_parts(x), act, add)
            w, label = cast(torch.Tensor, self.packed), "-packed" + label
        add2 = None if add is None else add.reshape(-1, w.shape[0])
        if _TIMING is None:
            y = gemm(x2, w, self.bias, kernel, act, add2)
        else:
            t0 = time.perf_counter()
            y = gemm(x2, w, self.bias, kernel, act, add2)
            _TIMING.append((self.stage, x2.shape[0], k, w.shape[0], kernel + label, time.perf_counter() - t0, self))
        return y.view(*x.shape[:-1], w.shape[0])

    def _choose(self, rows: int, w: torch.Tensor) -> str:
        """`choose` for this module, remembered per (rows, threads): no key building or table lookup per call. Which
        kernel runs never depends on what the process ran before: a weight that may pack is chosen for once, at
        PACK_ROWS rows, whatever the call's rows (once packed it runs oneDNN for every row count, so a per-rows choice
        would make a short description's bytes depend on whether a longer one came first — `t2l serve` vs
        `t2l generate`); otherwise per the call's exact rows."""
        packable = self.packable
        if packable:
            rows = PACK_ROWS
        memo: dict[tuple[int, int], str] | None = self.__dict__.get("_choices")
        if memo is None or len(memo) > 256:
            memo = self.__dict__["_choices"] = {}
        key = (rows, torch.get_num_threads())
        kernel = memo.get(key)
        if kernel is None:
            kernel = memo[key] = choose(rows, w.shape[1], w.shape[0], w, self.bias, packable, self._part_rows())
        return kernel

    def _pack_now(self, rows: int, w: torch.Tensor) -> bool:
        """Pack at this call? A weight that fits packs at its first call. One that packs in parts (a head: packing
        faults in a fresh copy of hundreds of MiB, ~0.7-0.9 s for the Llama-8B shapes' heads on a Zen 4 EPYC, more than
        a one-shot `t2l generate` gains) runs its first call of 2+ rows on the plain weight and packs at the second, so
        only a process that generates again pays for it (`Generator.warm_up` does, for a server). oneDNN gives the same
        bytes on the plain weight as packed, whole or in parts, for 2+ rows (measured on an Intel AMX Xeon and a Zen 4
        EPYC; a head's rows are layers x descriptions); a 1-row call packs at once."""
        if self._part_rows() >= w.shape[0] or rows < 2 or self.__dict__.get("_ran_plain"):
            return True
        self.__dict__["_ran_plain"] = True
        return False

    def _part_rows(self) -> int:
        n, k = self.weight.shape
        return part_rows(n, k, self.weight.element_size(), self.pack_max_bytes)

    def _forward_parts(self, x: torch.Tensor) -> torch.Tensor:
        """oneDNN on each packed part, the outputs side by side (the same sums as one GEMM: each output column is
        its own dot product over K)."""
        parts = cast(list[tuple[int, torch.Tensor, torch.Tensor | None]], self.parts)
        k = x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()
        t0 = time.perf_counter()
        y = torch.cat([gemm(x2, p, b, "onednn") for _, p, b in parts], dim=1)
        if _TIMING is not None:
            label = f"onednn-packed{_dtype_label(self.weight.dtype)}/{len(parts)}"
            _TIMING.append((self.stage, x2.shape[0], k, y.shape[1], label, time.perf_counter() - t0, self))
        return y.view(*x.shape[:-1], y.shape[1])

    def pack(self) -> torch.Tensor | None:
        """Reorder the weight into oneDNN's layout in place: `packed` holds it (returned), or, for a weight over
        `pack_max_bytes`, `parts` (None returned); `weight` becomes a meta tensor of the
        same shape, dtype and requires_grad (no second copy is kept). Whatever needs the plain weight gets it back:
        `state_dict()` (the plain values), `load_state_dict`, `.to()`/any `_apply`, a forward with autograd on or off
        the CPU (`unpack`); `dense_weight()` gives a plain copy."""
        if self.packed is None and self.parts is None:
            w = self.weight
            n, k = w.shape
            rows = self._part_rows()
            if rows >= n:
                self.packed = pack_weight(w)
            else:  # in parts: each part's plain pages go back as soon as it is packed, so the peak holds one part twice
                release = w.device.type == "cpu" and storage_unshared(w)
                parts: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
                with torch.no_grad():
                    for start in range(0, n, rows):
                        end = min(n, start + rows)
                        part = w[start:end]
                        parts.append((end, pack_weight(part), None if self.bias is None else self.bias[start:end].detach().clone()))
                        if release:
                            release_range(part.data_ptr(), part.numel() * part.element_size())
                        del part
                self.parts = parts
            release_pages(w)
            self.weight = nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"), requires_grad=w.requires_grad)
        return self.packed

    def unpack(self) -> None:
        """The plain weight again (a new Parameter with the same values); no-op when not packed."""
        if self.packed is not None or self.parts is not None:
            dense = self.dense_weight()
            self.packed = self.parts = None
            self.weight = nn.Parameter(dense, requires_grad=self.weight.requires_grad)

    def dense_weight(self) -> torch.Tensor:
        """The plain [out, in] weight (a new tensor when packed)."""
        if self.parts is not None:
            return torch.cat([p.to_dense() for _, p, _ in self.parts], dim=0)
        return self.weight.detach() if self.packed is None else self.packed.to_dense()

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed is not None or self.parts is not None:
            destination[prefix + "weight"] = self.dense_weight()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.unpack()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self.unpack()
        return super()._apply(fn, recurse)


def _dtype_label(dtype: torch.dtype) -> str:
    return "" if dtype == torch.float32 else "-bf16" if dtype == torch.bfloat16 else f"-{str(dtype).removeprefix('torch.')}"


def configure(module: nn.Module, policy: str, stage: str | None = None, packable: bool = False) -> int:
    """Set the kernel policy (and the stage name used in bench timings) of every KLinear in `module`; returns how many.
    `packable`: a linear that runs oneDNN on the CPU may pack its weight in place (see the module doc; it is unpacked
    for anything else, but a Parameter object held from before, e.g. by an optimizer, is no longer the module's).

    Raises:
        ValueError: an unknown policy, or a kernel this build lacks.
    """
    if policy not in POLICIES:
        raise ValueError(f"kernel must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy != "auto" and policy not in available():
        raise ValueError(f"the {policy} kernel is not available in this torch/numpy build (available: {', '.join(available())})")
    n = 0
    cap = max(PACK_MIN_BYTES, sum(p.numel() * p.element_size() for p in module.parameters()) // PACK_SHARE)
    for m in module.modules():
        if isinstance(m, KLinear):
            m.policy = policy
            m.packable = packable and "onednn" in available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            m.pack_max_bytes = cap if m.packable else 0
            if stage is not None:
                m.stage = stage
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ the cached choices


_CHOICES: dict[str, dict[str, str]] = {}  # fingerprint key -> {"rows:K:N": kernel}
_FP: list[Any] = [None, None]  # (threads, key): the fingerprint is recomputed only when the thread count changes


def _current_key() -> str:
    threads = torch.get_num_threads()
    if _FP[0] != threads:
        _FP[0], _FP[1] = threads, fingerprint_key(fingerprint())
    return str(_FP[1])


def _table(key: str) -> dict[str, str]:
    table = _CHOICES.get(key)
    if table is None:
        entry = read_cache().get("machines", {}).get(key) or {}
        table = {s: c["kernel"] for s, c in (entry.get("choices") or {}).items()
                 if isinstance(c, dict) and c.get("kernel") in AUTO_KERNELS and c.get("kernel") in available()}
        _CHOICES[key] = table
    return table


def bucket(rows: int) -> int:
    """Rows rounded up to a power of two (the shape class a choice is made for)."""
    return 1 << max(0, rows - 1).bit_length()


def time_gemm(fn: Callable[[], Any], budget_s: float = 0.3, reps: int = 3) -> float:
    """Best-of wall time (s) of `fn` after one warm-up call; fewer repetitions when one call is slow."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = first
    for _ in range(reps if first * reps < budget_s else 1):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(rows: int, w: torch.Tensor, b: torch.Tensor | None, kernels: list[str] | None = None, packed: bool = False,
            rows_per_part: int = 1 << 62) -> dict[str, float]:
    """Seconds per call of each kernel for a [rows, K] input on this weight (rows capped at MEASURE_FLOPS); `packed`:
    oneDNN is timed on a packed copy of the weight (freed on return), as a packable module would run it; a weight
    packed in parts of `rows_per_part` output rows is timed on its first part alone, every kernel alike (a packed copy
    of the whole, e.g. a 512 MiB head, would be the second copy packing in parts avoids)."""
    n, k = w.shape
    if packed and rows_per_part < n:  # a weight packed in parts: every candidate timed on the first part's rows
        w, b = w[:rows_per_part], None if b is None else b[:rows_per_part]
        n = rows_per_part
    rows = max(1, min(rows, max(8, int(MEASURE_FLOPS / (2 * k * n)))))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(0)).to(w.dtype)
    names = kernels or available()
    best: dict[str, float] = {}
    weights = {name: pack_weight(w) if packed and name == "onednn" else w for name in names}
    with torch.no_grad():
        for rep in range(3):  # round-robin, best of each: a burst of other load does not hit one kernel only
            for name in names:
                best[name] = min(best.get(name, float("inf")), time_gemm(functools.partial(gemm, x, weights[name], b, name), reps=1))
            if rep == 0 and min(best.values()) > 0.5:  # slow shapes (Llama-8B heads): one round is enough
                break
    return best


def choose(rows: int, k: int, n: int, w: torch.Tensor, b: torch.Tensor | None, packable: bool = False,
           rows_per_part: int = 1 << 62) -> str:
    """The kernel for an [rows, k] x [k, n] GEMM on this machine (measured once per shape class, then cached);
    `packable`: oneDNN is measured (and would run) on a packed weight, a shape class of its own; packed in parts of
    `rows_per_part` output rows (under n), one more."""
    if 2 * rows * k * n < SMALL_FLOPS:
        return "torch"
    key = _current_key()
    table = _table(key)
    shape = f"{bucket(rows)}:{k}:{n}" + ("" if w.dtype == torch.float32 else f":{str(w.dtype).removeprefix('torch.')}")
    shape += (":packed" + (f"/{rows_per_part}" if rows_per_part < n else "")) if packable else ""
    kernel = table.get(shape)
    if kernel is None:
        times = measure(bucket(rows), w, b, [name for name in AUTO_KERNELS if name in available()], packed=packable,
                        rows_per_part=rows_per_part)
        kernel = min(times, key=lambda name: times[name])
        table[shape] = kernel
        save_choice(key, shape, kernel, times)
    return kernel


