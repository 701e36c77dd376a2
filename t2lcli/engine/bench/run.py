"""`t2l bench`'s entry point: the measurements in order, assembled into the `t2l-bench/1` report.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t2lcli import __version__, console
from t2lcli.engine.bench.baselines import baseline_load_base, baseline_prompt
from t2lcli.engine.bench.floor import cold_floor, measure_floor
from t2lcli.engine.bench.measure import (
    IMPORTS_CODE,
    base_cache_name,
    build_adapter,
    child_env,
    machine_info,
    measure_cold,
    median_ms,
    peak_rss_mb,
    percentiles,
    run_child,
)
from t2lcli.engine.bench.request import DESCRIPTIONS, SCHEMA, BenchRequest, validate_request
from t2lcli.engine.bench.shapes import build_shapes_checkpoint
from t2lcli.engine.bench.targets import evaluate_targets
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import T2LError
from t2lcli.hardware import Profile

# ----------------------------------------------------------------------------------------------- the benchmark


def _checkpoint_for(req: BenchRequest) -> tuple[str, str | None, dict[str, Any]]:
    """(checkpoint path, shapes name or None, build info): the given checkpoint, or a random one of the shapes."""
    if req.checkpoint is not None:
        return req.checkpoint, None, {}
    shape_name = req.shapes or "smollm2-135m"
    path, info = build_shapes_checkpoint(shape_name, req.variant)
    return str(path), shape_name, info


def _measure_imports(req: BenchRequest) -> float:
    """Median ms of the generate path's imports in a fresh interpreter."""
    console.log("measuring imports (fresh interpreter)")
    imports = []
    for _ in range(max(1, min(3, req.cold_runs))):
        code, wall, _, out, err = run_child([sys.executable, "-c", IMPORTS_CODE], env=child_env())
        if code != 0:
            raise T2LError(f"the import probe failed: {err.strip().splitlines()[-1] if err.strip() else code}")
        imports.append(float(out.strip().splitlines()[-1]) * 1000)
    return round(statistics.median(imports), 3)


def _load_generator(req: BenchRequest, profile: Profile, ckpt_path: str, device: str, enc_device: str, stages: dict[str, float]) -> Any:
    """Load the checkpoint (median of up to 3 loads) and its encoder; the times go into `stages`."""
    from t2lcli.engine.generate import Generator

    console.log("measuring checkpoint and encoder load")
    loads = []
    for _ in range(max(1, min(3, req.runs))):
        t0 = time.perf_counter()
        gen = Generator.load(ckpt_path, device=device, dtype=profile.hypernet.dtype, encoder_device=enc_device,
                             encoder_dtype=profile.encoder.dtype, kernel=profile.kernel)
        loads.append((time.perf_counter() - t0) * 1000)
    stages["checkpoint_load"] = round(statistics.median(loads), 3)
    t0 = time.perf_counter()
    _ = gen.encoder
    stages["encoder_load"] = round((time.perf_counter() - t0) * 1000, 3)
    return gen


def _warm_runs(gen: Any, req: BenchRequest, opts: Any, tmpdir: str, sync: Callable[[], None], stages: dict[str, float]) -> dict[str, list[float]]:
    """`runs` descriptions in memory, stage by stage (ms); the stage medians go into `stages`."""
    from t2lcli.engine.adapters import save_adapter

    t: dict[str, list[float]] = {k: [] for k in ("embed", "forward", "build", "write", "warm", "warm_write", "warm_cpu")}
    console.log(f"warm runs: {req.runs}")
    for i in range(req.runs):
        desc = DESCRIPTIONS[i % len(DESCRIPTIONS)]
        sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        emb = gen.embed([desc])
        sync()
        t1 = time.perf_counter()
        fac = gen.factors(emb)
        sync()
        t2 = time.perf_counter()
        adapter = build_adapter(gen, fac, desc, opts)
        t3 = time.perf_counter()
        t["warm_cpu"].append((time.process_time() - c0) * 1000)
        save_adapter(adapter, Path(tmpdir) / f"w{i}", force=True)
        t4 = time.perf_counter()
        t["embed"].append((t1 - t0) * 1000)
        t["forward"].append((t2 - t1) * 1000)
        t["build"].append((t3 - t2) * 1000)
        t["write"].append((t4 - t3) * 1000)
        t["warm"].append((t3 - t0) * 1000)
        t["warm_write"].append((t4 - t0) * 1000)
    stages.update(embed=median_ms(t["embed"]), hypernet_forward=median_ms(t["forward"]), adapter_build=median_ms(t["build"]), adapter_write=median_ms(t["write"]))
    return t


def _record_gemms(gen: Any, runs: int) -> list[list[Any]]:
    """The GEMMs of one description, per run (up to 5): the stage split and the shapes the floor is timed on."""
    from t2lcli.engine import kernels

    recorded = []
    for i in range(min(runs, 5)):
        with kernels.record() as calls:
            gen.factors(gen.embed([DESCRIPTIONS[i % len(DESCRIPTIONS)]]))
        recorded.append(list(calls))
    return recorded


def _throughput(gen: Any, req: BenchRequest, opts: Any, sync: Callable[[], None]) -> tuple[list[dict[str, Any]], dict[int, list[Any]]]:
    """Adapters/s at each batch size (median of 3 timed runs after one untimed warm-up run at that size, as the warm
    latency is measured after a first generate: a new row count's one-time costs, e.g. oneDNN building its kernels
    for that shape, are not throughput), and the GEMMs each batch records."""
    from t2lcli.engine import kernels

    throughput = []
    batch_calls: dict[int, list[Any]] = {}
    for b in req.batch:
        descs = [DESCRIPTIONS[i % len(DESCRIPTIONS)] + f" (variant {i})" for i in range(b)]
        gen.generate(descs, opts)  # warm-up at this batch size, untimed
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            out = gen.generate(descs, opts)
            sync()
            times.append(time.perf_counter() - t0)
            assert len(out) == b
            del out
        best = statistics.median(times)
        with kernels.record() as calls:
            gen.factors(gen.embed(descs))
        batch_calls[b] = list(calls)
        throughput.append({"batch": b, "seconds": round(best, 4), "adapters_per_s": round(b / best, 2)})
        console.log(f"batch {b}: {b / best:.1f} adapters/s")
    return throughput, batch_calls


def _baselines(req: BenchRequest, shape_name: str | None, base_model: str, warm_p: dict[str, Any], cold_p: dict[str, Any] | None) -> dict[str, Any]:
    """Load-the-base (unless --baseline none; skipped without a config.json) and prompt-cost baselines, with the ratios."""
    if shape_name:
        shape_cfg = load_shape(shape_name)["config"]
    else:
        shape_cfg = base_config(base_model, hub_cache=False, known_shapes=False)
    load_base = None
    if req.baseline != "none":
        if shape_cfg is None:
            console.warn(f"no config.json for the base {base_model}: the load-the-base baseline is skipped")
        else:
            load_base = baseline_load_base(shape_name or base_cache_name(base_model), shape_cfg, req.baseline)
    prompt = baseline_prompt(shape_name, base_model, shape_cfg)
    if load_base is not None:
        load_base["total_s"] = round(load_base["import_s"] + load_base["full_load_s"], 3)
        load_base["ratio_vs_warm"] = round((load_base["full_load_s"] * 1000 + warm_p["p50"]) / warm_p["p50"], 1)
        if cold_p:
            load_base["ratio_vs_cold"] = round((load_base["total_s"] * 1000 + cold_p["p50"]) / cold_p["p50"], 2)
    return {"load_base": load_base, "prompt": prompt}


def _config_section(req: BenchRequest, profile: Profile, gen: Any, ckpt_path: str, shape_name: str | None, info: dict[str, Any], device: str) -> dict[str, Any]:
    """The report's `config`: what was benchmarked, on which devices and dtypes."""
    ckpt = gen.ckpt
    c = ckpt.config
    return {
        "shapes": shape_name, "checkpoint": None if shape_name else str(ckpt_path), "variant": c.variant,
        "profile": profile.name, "base_model": ckpt.base_model,
        "encoder": info.get("encoder", ckpt.encoder.model), "encoder_note": info.get("encoder_note"),
        "hypernet_params": ckpt.hypernet.n_params(), "latent": c.latent, "head_in": c.head_in, "r": c.r,
        "target_modules": list(c.target_modules), "n_layers": c.n_layers, "device": device,
        "dtype": profile.hypernet.dtype, "encoder_dtype": str(gen.encoder.dtype).removeprefix("torch."),
        "runs": req.runs, "cold_runs": req.cold_runs, "batch": list(req.batch),
    }


def run_bench(req: BenchRequest, profile: Profile) -> dict[str, Any]:
    """Run the whole benchmark and return the `t2l-bench/1` report.

    Raises:
        InputError: bad runs/batch/baseline values or unknown shapes.
        T2LError: CUDA asked for by the profile but unavailable, unreadable checkpoint.
    """
    validate_request(req)
    import torch

    from t2lcli.engine.base_model import resolve_device
    from t2lcli.engine.generate import GenerateOptions

    device = resolve_device(profile.hypernet.device)
    enc_device = resolve_device(profile.encoder.device)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_info()
    ckpt_path, shape_name, info = _checkpoint_for(req)
    stages: dict[str, float] = {"imports": _measure_imports(req)}
    gen = _load_generator(req, profile, ckpt_path, device, enc_device, stages)
    cuda = device.startswith("cuda") or enc_device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    opts = GenerateOptions()
    t0 = time.perf_counter()
    gen.generate([DESCRIPTIONS[0]], opts)  # first call pays one-time kernel/allocator warm-up (and kernel choice, once per machine)
    stages["first_generate"] = round((time.perf_counter() - t0) * 1000, 3)
    gen.generate([DESCRIPTIONS[0]], opts)  # the second packs the heads (`KLinear._pack_now`), as a server's warm-up does
    with tempfile.TemporaryDirectory(prefix="t2l-bench-") as tmpdir:
        warm_t = _warm_runs(gen, req, opts, tmpdir, sync, stages)
        recorded = _record_gemms(gen, req.runs)
        throughput, batch_calls = _throughput(gen, req, opts, sync)
        peak_vram = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
        cold, cold_rss, cold_cpu, cold_stages = measure_cold(req, ckpt_path, tmpdir)

    memory = {"peak_rss_mb": peak_rss_mb(), "cold_generate_peak_rss_mb": cold_rss, "peak_vram_mb": peak_vram}
    warm_p = percentiles(warm_t["warm"])
    cold_p = percentiles(cold)
    floor = None
    if not cuda:  # measured after the peak RSS: a packed oneDNN copy of the largest weight exists while it is timed
        console.log("measuring the floor: the same GEMM shapes with every kernel in this process")
        floor = measure_floor(stages, warm_p, recorded, batch_calls, throughput)
        floor["cold"] = cold_floor(stages, cold_stages, cold_p, ckpt_path, gen)
    assert warm_p is not None  # runs >= 1 (validate_request)
    report = {
        "schema": SCHEMA, "t2l_version": __version__, "date": date, "machine": machine,
        "config": _config_section(req, profile, gen, ckpt_path, shape_name, info, device),
        "stages_ms": stages,
        "warm_ms": warm_p,
        "warm_write_ms": percentiles(warm_t["warm_write"]),
        "cold_ms": cold_p,
        "cpu_time_ms": {"warm": percentiles(warm_t["warm_cpu"]), "cold": percentiles(cold_cpu),
                        "note": "process CPU time (user + system, all threads): the work, independent of other load"},
        "throughput": throughput,
        "memory": memory,
        "baselines": _baselines(req, shape_name, gen.ckpt.base_model, warm_p, cold_p),
        "floor": floor,
    }
    report["targets"] = evaluate_targets(report)
    return report
