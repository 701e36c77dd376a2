"""The floor of `t2l bench`: the same GEMM shapes timed with the fastest kernel in this process, per stage and in
total, and the cold start against reading its files.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import T2LError

FLOOR_STAGES = ("encoder", "trunk", "heads")
BF16_FLOOR = ("torch-bf16", "onednn-bf16", "onednn-packed-bf16")  # a stage that runs in bf16 is floored by these


def _floor_kernels() -> list[str]:
    """Every fp32 kernel in this process, a prepacked oneDNN weight (floor only: it is a second copy of the weight)
    and bf16 where the CPU computes it natively (reported beside the floor, not in it: its results are not fp32's)."""
    from t2lcli.engine import kernels
    from t2lcli.engine.encoder import native_cpu_bf16

    names = list(kernels.available())
    if "onednn" in names and hasattr(torch_ops(), "_reorder_linear_weight"):
        names.append("onednn-packed")
    if native_cpu_bf16():
        names.append("torch-bf16")
    return names


def _packed_linear(x: Any, packed: Any, b: Any) -> Any:
    return torch_ops()._linear_pointwise(x, packed, b, "none", [], "")


def torch_ops() -> Any:
    import torch

    return torch.ops.mkldnn


def _best(fn: Any) -> float:
    """Best of up to 10 calls after a warm-up (fewer past 0.5 s): a floor is a minimum, and best-of-3 of a 20 us GEMM
    moved the default shapes' encoder floor by 50% between runs on an idle machine."""
    from t2lcli.engine import kernels

    return kernels.time_gemm(fn, budget_s=0.5, reps=10)


def _time_shape(rows: int, module: Any, names: list[str]) -> dict[str, float]:
    """Seconds per call of an [rows, K] x this module's weight GEMM, per kernel (best of a few; one run if slow)."""
    import torch
    from torch.nn import functional as F

    from t2lcli.engine import kernels

    w = module.dense_weight() if hasattr(module, "dense_weight") else module.weight.detach()  # a packed encoder: a plain copy
    b = None if module.bias is None else module.bias.detach()
    x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    out: dict[str, float] = {}
    with torch.no_grad():
        for name in names:
            if w.dtype != torch.float32:  # a bf16 stage: torch's and oneDNN's bf16 GEMM on its own weight (plain and packed)
                try:
                    if name in ("torch-bf16", "onednn-bf16"):
                        out[name] = _best(partial(kernels.gemm, x, w, b, name.split("-")[0]))
                    elif name == "onednn-packed-bf16":
                        packed = torch_ops()._reorder_linear_weight(w, rows)
                        out[name] = _best(partial(_packed_linear, x, packed, b))
                        del packed
                except RuntimeError:  # a oneDNN build without bf16 on this CPU
                    pass
            elif name in kernels.KERNELS:
                out[name] = _best(partial(kernels.gemm, x, w, b, name))
            elif name == "onednn-packed":
                packed = torch_ops()._reorder_linear_weight(w, rows)
                out[name] = _best(partial(_packed_linear, x, packed, b))
                del packed
            elif name == "torch-bf16":
                wb, xb = w.to(torch.bfloat16), x.to(torch.bfloat16)
                bb = None if b is None else b.to(torch.bfloat16)
                out[name] = _best(partial(F.linear, xb, wb, bb))
                del wb
    return out


def _stage_floor(calls: list[Any], names: list[str], memo: dict[tuple[int, int, int, str], dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per stage: the GEMMs' FLOPs, the best time of each distinct shape summed over the stage's calls, which
    kernels gave it, and which kernels the hot path ran."""
    out: dict[str, dict[str, Any]] = {}
    for stage, m, k, n, kernel, secs, module in calls:
        dtype = str(module.weight.dtype).removeprefix("torch.")
        times = memo.get((m, k, n, dtype))
        if times is None:
            times = memo[(m, k, n, dtype)] = _time_shape(m, module, names if dtype == "float32" else list(BF16_FLOOR))
        same = [name for name in times if (name in BF16_FLOOR) == (dtype != "float32")]
        best = min(same, key=lambda name: times[name])
        row = out.setdefault(stage or "other", {"gemms": 0, "gflop": 0.0, "floor_ms": 0.0, "gemm_ms": 0.0, "kernels": {}, "floor_kernels": {},
                                                "bf16_ms": 0.0 if "torch-bf16" in times and dtype == "float32" else None, "dtype": dtype})
        if row["bf16_ms"] is not None:
            row["bf16_ms"] += times["torch-bf16"] * 1000
        row["gemms"] += 1
        row["gflop"] += 2 * m * k * n / 1e9
        row["floor_ms"] += times[best] * 1000
        row["gemm_ms"] += secs * 1000
        row["kernels"][kernel] = row["kernels"].get(kernel, 0) + 1
        row["floor_kernels"][best] = row["floor_kernels"].get(best, 0) + 1
    return out


def _pass_floor(calls: list[Any], memo: dict[tuple[int, int, int, str], dict[str, float]], reps: int = 20, budget_s: float = 1.0) -> dict[str, float]:
    """Per stage: its recorded GEMMs replayed back to back in the pass's order (each weight read once, as a forward
    pass reads it), best of up to `reps` (at least 3; fewer once `budget_s` is spent: a busy machine's bursts hit a
    few), each with the fastest kernel (from `memo`) that runs on the module's weight as it is: packed -> oneDNN on
    it (in parts: each part); plain -> the fastest of torch/oneDNN/OpenBLAS (no second copy of any weight).

    The per-shape floor times one GEMM again and again, so a weight that fits the core's cache is timed hot; a pass
    reads each weight once, from L3 or memory. On MiniLM (36 GEMMs, 42 MB of weights, 13 rows) the replay took ~1.7x
    the per-shape sum on an AMX Xeon: this floor is what no forward pass can beat, the per-shape one is not."""
    import torch

    from t2lcli.engine import kernels

    plan: dict[str, list[tuple[Any, Any, Any, str]]] = {}
    gen = torch.Generator().manual_seed(0)
    for stage, m, k, n, _kernel, _secs, module in calls:
        dtype = str(module.weight.dtype).removeprefix("torch.")
        times = memo[(m, k, n, dtype)]
        x = torch.randn(m, k, generator=gen).to(module.weight.dtype)
        if getattr(module, "parts", None) is not None:  # packed in parts: oneDNN on each part (the outputs' join is not a GEMM)
            plan.setdefault(stage or "other", []).extend((x, p, pb, "onednn") for _, p, pb in module.parts)
            continue
        w = module.packed if getattr(module, "packed", None) is not None else module.weight.detach()
        if w.is_mkldnn:
            name = "onednn"
        else:
            plain = [t for t in times if t.split("-")[0] in kernels.KERNELS and "packed" not in t and (t.endswith("-bf16") == (dtype != "float32"))]
            name = min(plain, key=lambda t: times[t]).split("-")[0] if plain else "torch"
        b = None if module.bias is None else module.bias.detach()
        plan.setdefault(stage or "other", []).append((x, w, b, name))
    out: dict[str, float] = {}
    with torch.no_grad():
        for stage, steps in plan.items():
            def run(steps: list[tuple[Any, Any, Any, str]] = steps) -> None:
                for x, w, b, name in steps:
                    kernels.gemm(x, w, b, name)

            run()
            best, start = float("inf"), time.perf_counter()
            for i in range(reps):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
                if i >= 2 and time.perf_counter() - start > budget_s:
                    break
            out[stage] = best * 1000
    return out


def _label(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def measure_floor(stages: dict[str, float], warm: dict[str, Any] | None, recorded: list[list[Any]], batch_calls: dict[int, list[Any]],
                  throughput: list[dict[str, Any]]) -> dict[str, Any]:
    """measured / floor per stage (encoder, hypernet trunk, heads), in total and per batch size.

    The floor of a stage is the time of its GEMMs (the shapes recorded from the hot path, counted as run) with the
    fastest kernel this process has for each shape; everything else a stage does (tokenizing, attention, norms,
    activations, copies) counts against it. Measured: encoder = the embed stage, heads = their GEMMs' time,
    trunk = the hypernetwork forward minus the heads (medians over the recorded runs).
    """
    from t2lcli.engine import kernels

    names = _floor_kernels()
    memo: dict[tuple[int, int, int, str], dict[str, float]] = {}
    per = _stage_floor(recorded[-1], names, memo) if recorded else {}
    passes = _pass_floor(recorded[-1], memo) if recorded else {}
    heads_ms = statistics.median([sum(c[5] for c in run if c[0] == "heads") * 1000 for run in recorded]) if recorded else 0.0
    measured = {"encoder": stages.get("embed", 0.0), "heads": heads_ms, "trunk": max(0.0, stages.get("hypernet_forward", 0.0) - heads_ms)}
    rows = []
    for stage in FLOOR_STAGES:
        p = per.get(stage)
        if p is None:
            continue
        m_ms, f_ms = round(measured[stage], 3), round(p["floor_ms"], 3)
        pass_ms = round(max(passes.get(stage, 0.0), f_ms), 3)  # a replay cannot beat the per-shape best (noise)
        rows.append({"stage": stage, "measured_ms": m_ms, "floor_ms": f_ms, "ratio": round(m_ms / f_ms, 2) if f_ms else None,
                     "pass_floor_ms": pass_ms, "pass_ratio": round(m_ms / pass_ms, 2) if pass_ms else None, "gemms": p["gemms"],
                     "gflop": round(p["gflop"], 6), "gemm_ms": round(p["gemm_ms"], 3), "kernel": _label(p["kernels"]),
                     "floor_kernel": _label(p["floor_kernels"]), "dtype": p["dtype"],
                     "bf16_floor_ms": None if p["bf16_ms"] is None else round(p["bf16_ms"], 3)})
    floor_total = sum(r["floor_ms"] for r in rows)
    pass_total = sum(r["pass_floor_ms"] for r in rows)
    total = warm["p50"] if warm else None
    batches = []
    for row in throughput:
        calls = batch_calls.get(row["batch"])
        if not calls:
            continue
        fl = sum(v["floor_ms"] for v in _stage_floor(calls, names, memo).values())
        floor_rate = row["batch"] / (fl / 1000) if fl else None
        batches.append({"batch": row["batch"], "adapters_per_s": row["adapters_per_s"], "floor_ms": round(fl, 3),
                        "floor_adapters_per_s": None if floor_rate is None else round(floor_rate, 2),
                        "fraction": None if not floor_rate else round(row["adapters_per_s"] / floor_rate, 6)})
    model, flags = kernels.cpu_model_and_flags()
    return {
        "method": "the hot path's GEMM shapes (recorded), each timed with every fp32 kernel in this process (best of up to 10 after a warm-up); "
                  "floor = the fastest per shape, summed as run; measured includes everything else a stage does; "
                  "bf16_floor_ms (native bf16 CPUs only): the same GEMMs in bf16, for reference (not fp32 results); "
                  "pass_floor_ms: the stage's GEMMs replayed in the pass's order, each weight read once (weights not cache-hot), "
                  "with the fastest kernel that runs on the weight as the hot path holds it",
        "kernels_tried": names, "policy": _policy_of(recorded), "cpu": model, "flags": flags,
        "stages": rows,
        "total": {"measured_ms": total, "floor_ms": round(floor_total, 3),
                  "ratio": round(total / floor_total, 2) if total and floor_total else None,
                  "pass_floor_ms": round(pass_total, 3), "pass_ratio": round(total / pass_total, 2) if total and pass_total else None,
                  "note": "measured: warm p50 (description -> adapter tensors in memory)"},
        "throughput": batches,
        "shapes_timed": [{"m": m, "k": k, "n": n, "dtype": dt, "ms": {name: round(t * 1000, 3) for name, t in v.items()}}
                         for (m, k, n, dt), v in memo.items()],
    }


def _policy_of(recorded: list[list[Any]]) -> str | None:
    for run in recorded:
        for call in run:
            return str(getattr(call[6], "policy", None))
    return None


def cold_floor(stages: dict[str, float], cold_stages: dict[str, float], cold: dict[str, Any] | None, ckpt_path: str, gen: Any) -> dict[str, Any]:
    """A cold `t2l generate`'s stages against the floor of reading its files (checkpoint + encoder weights, page cache
    warm: each file read once into one buffer) and the warm generate."""
    files: list[Path] = []
    ck = Path(gen.ckpt.path) if gen.ckpt.path else Path(ckpt_path)
    if ck.is_dir():
        files += [f for f in ck.rglob("*") if f.is_file()]
    enc_model = getattr(gen.encoder, "model", None)
    from t2lcli.engine.base_model import resolve_model

    try:
        enc_dir = resolve_model(gen.ckpt.encoder.model, kind="encoder")
        files += [f for f in Path(enc_dir).glob("*") if f.is_file() and f.suffix in (".safetensors", ".json", ".txt")]
    except T2LError:
        pass
    del enc_model
    nbytes, t0 = 0, time.perf_counter()
    for f in files:
        with open(f, "rb") as fh:
            nbytes += len(fh.read())
    read_ms = (time.perf_counter() - t0) * 1000
    load = cold_stages.get("checkpoint_load")
    return {
        "files": len(files), "bytes": nbytes, "read_ms": round(read_ms, 3),
        "imports_ms": stages.get("imports"), "checkpoint_load_ms": load, "embed_ms": cold_stages.get("embed"),
        "hypernet_ms": cold_stages.get("hypernet"), "write_ms": cold_stages.get("write"),
        "cold_p50_ms": cold["p50"] if cold else None, "target_ms": 3000.0,
        "note": "the child's own stage timings (medians): embed includes loading the encoder; read_ms reads the same files once",
    }
