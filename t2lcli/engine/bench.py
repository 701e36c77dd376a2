"""`t2l bench`: how fast and how small adaptation is, measured on the machine at hand, with baselines in the same run.

What is measured (every number comes from this run; nothing is copied from elsewhere):
  * stages: generate-path imports (fresh interpreter), checkpoint load, encoder load, description embedding,
    hypernetwork forward, PEFT tensor build, adapter write (atomic folder, fsync'd);
  * warm latency: description -> adapter in memory, in this process, p50/p95/p99 over `runs`;
  * cold latency: a fresh `t2l generate` process end to end (wall clock), p50/p95/p99 over `cold_runs`;
  * throughput: adapters/s for a batch of descriptions (embed + forward + tensors), at each batch size;
  * memory: peak RSS of this process and of the cold `t2l generate` child (`os.wait4`), peak VRAM on CUDA;
  * baseline "load the base": a fresh process imports transformers and loads a randomly initialised base of the real
    shapes (bf16, safetensors written once under $T2L_HOME/bench) with `AutoModelForCausalLM.from_pretrained`, as the
    reference implementation does before it can generate. Bases over `FULL_BASE_LIMIT` bytes are loaded at depths 1
    and 4 and extrapolated to the full depth (the method is stated in the output);
  * baseline "prompt cost": tokens the task description and a 3-shot prompt add to every request (T2L adds 0), with the
    base's own tokenizer when it is available offline, otherwise a named stand-in.

`--shapes NAME` builds a random hypernetwork of the official size (no download) and, for the gte-large encoder of the
official checkpoints, a random BERT of gte-large-en-v1.5's size (24 x 1024, FFN 6144 = its GLU 4096, 434M params).

JSON schema (`t2l-bench/1`, stable; new keys may be added, none renamed): see `BENCH_SCHEMA` below and docs/bench.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli import __version__, console
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import InputError, T2LError, show_value
from t2lcli.hardware import Profile

SCHEMA = "t2l-bench/1"
PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "bench_prompts.json"
FULL_BASE_LIMIT = 3 * 2**30  # bytes: larger bases are measured at depth 4 and scaled by bytes
GTE_LARGE_PROXY = {  # gte-large-en-v1.5 sizes as a plain BERT (its GLU FFN 4096 has the params/FLOPs of a 6144 FFN)
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 6144,
    "vocab_size": 30528, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
}
DESCRIPTIONS = [
    "Answer grade-school math word problems step by step.",
    "Classify the sentiment of a movie review as positive or negative.",
    "Translate English sentences into French.",
    "Summarize a news article in one sentence.",
    "Write a Python function that solves the described programming task.",
    "Pick the most plausible ending for a short everyday scenario.",
    "Answer science questions for middle-school students with the letter of the correct choice.",
    "Decide whether a yes/no question is answered by the given passage.",
]
BENCH_SCHEMA = {
    "schema": "always 't2l-bench/1'",
    "t2l_version": "str", "date": "ISO-8601 UTC",
    "machine": "cpu, cores, torch_threads, torch, cuda, gpu, python, platform, loadavg (1/5/15 min at start)",
    "config": "shapes|checkpoint, variant, profile, base_model, encoder (+ encoder_note), hypernet_params, latent, head_in, r, "
              "target_modules, n_layers, device, dtype, encoder_dtype (as resolved), runs, cold_runs, batch",
    "stages_ms": "imports, checkpoint_load, encoder_load, embed, hypernet_forward, adapter_build, adapter_write (medians)",
    "warm_ms / warm_write_ms / cold_ms": "{n, p50, p95, p99, mean, min, max} (cold: null when cold_runs = 0)",
    "cpu_time_ms": "{warm, cold}: the same percentiles of CPU time (user + system, all threads); robust to other load",
    "throughput": "[{batch, seconds, adapters_per_s}]",
    "memory": "peak_rss_mb (this process), cold_generate_peak_rss_mb, peak_vram_mb (CUDA only)",
    "baselines.load_base": "{method, dtype, base_bytes, depths, load_s per depth, from_pretrained_s, read_s, read_gib_per_s, "
                           "per_layer_s (read time of one decoder layer), full_load_s, extrapolated, estimate, import_s, "
                           "peak_rss_mb, total_s, ratio_vs_warm, ratio_vs_cold} or null",
    "baselines.prompt": "{tokenizer, tokenizer_note, description_tokens, icl_3shot_tokens, t2l_tokens: 0, kv_bytes_per_token}",
    "targets": "[{name, value, target, unit, met, cpu_time}] (value: wall clock; cpu_time: the CPU time for latency targets)",
}


@dataclass
class BenchRequest:
    """What to benchmark and how often."""

    checkpoint: str | None = None
    shapes: str | None = None
    variant: str = "L"
    runs: int = 20
    cold_runs: int = 5
    batch: list[int] = field(default_factory=lambda: [1, 8, 64])
    baseline: str = "auto"  # auto | full | sampled | none
    profile_name: str | None = None
    set_: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- shapes


def hypernet_config(shape: dict[str, Any], variant: str) -> Any:
    """The HyperNetConfig of the official checkpoint for these shapes (no weights)."""
    from t2lcli.engine.base_model import shape_from_config
    from t2lcli.engine.hypernet import HyperNetConfig

    hn = shape["hypernet"]
    ms = shape_from_config(shape["config"], hn["target_modules"])
    return HyperNetConfig(
        variant=variant, emb_dim=1024 if "gte" in shape["encoder"] else 384, latent=hn["latent"], head_in=hn["head_in"],
        n_layers=ms.n_layers, target_modules=list(hn["target_modules"]),
        module_dims={m: [s.d_in, s.d_out] for m, s in ms.modules.items()}, ab_offset=bool(hn.get("ab_offset")),
    )


def bench_home() -> Path:
    from t2lcli.models import t2l_home

    return t2l_home() / "bench"


def _encoder_folder(shape: dict[str, Any]) -> tuple[str, str, Any]:
    """(encoder spec model, note, EncoderSpec) for a shapes run; gte-large becomes a cached random proxy."""
    from t2lcli.engine.base_model import resolve_model
    from t2lcli.engine.encoder import EncoderSpec, encoder_spec_for

    if "gte" not in shape["encoder"]:
        return shape["encoder"], "the real encoder (shipped in a package)", encoder_spec_for(shape["encoder"])
    from t2lcli.engine.atomic import atomic_dir, file_lock
    from t2lcli.engine.bert import random_bert_folder

    target = bench_home() / "encoder-gte-large-proxy"
    with file_lock(bench_home() / ".encoder.lock"):
        if not (target / "model.safetensors").is_file():
            console.log(f"building a random gte-large-sized encoder in {target} (one time, ~1.7 GB)")
            tok = resolve_model("all-minilm-l6-v2", kind="encoder") / "tokenizer.json"
            with atomic_dir(target, force=True, cache=True) as tmp:
                random_bert_folder(tmp, GTE_LARGE_PROXY, tok)
    note = ("random BERT of gte-large-en-v1.5's size (24 x 1024, FFN 6144 ~ its GLU 4096; 434M params), "
            "bert-base-uncased WordPiece; the real gte runs remote code and is not available offline")
    return str(target), note, EncoderSpec(str(target), 1024, "cls", "l2_sqrt_dim", True, 512)


def build_shapes_checkpoint(name: str, variant: str) -> tuple[Path, dict[str, Any]]:
    """A native checkpoint of the official sizes for `name`, random weights, cached under $T2L_HOME/bench.

    Returns:
        (checkpoint folder, info with encoder note and build time)
    """
    from t2lcli.engine.atomic import file_lock
    from t2lcli.engine.base_model import shape_from_config
    from t2lcli.engine.checkpoint import T2LCheckpoint, save_checkpoint
    from t2lcli.engine.hypernet import HyperLoRA

    shape = load_shape(name)
    cfg = hypernet_config(shape, variant)
    enc_model, enc_note, spec = _encoder_folder(shape)
    target = bench_home() / f"ckpt-{name}-{variant}"
    info = {"encoder": shape["encoder"] if "gte" not in shape["encoder"] else "gte-large-en-v1.5 (random proxy)",
            "encoder_note": enc_note, "build_s": 0.0, "note": shape["note"]}
    with file_lock(bench_home() / f".ckpt-{name}-{variant}.lock"):
        if not (target / "t2l_config.json").is_file():
            console.log(f"building a random {variant} hypernetwork of the official {name} sizes in {target} (one time)")
            t0 = time.perf_counter()
            import torch

            torch.manual_seed(0)
            net = HyperLoRA(cfg)
            with torch.no_grad():  # random head weights so adapters differ per description (bias-HyperInit zeroes them)
                for head in net.heads.values():
                    head.weight.uniform_(-1e-3, 1e-3)
            ms = shape_from_config(shape["config"], cfg.target_modules)
            ckpt = T2LCheckpoint(net, spec, shape["hub_id"], ms, provenance={"bench_shapes": name, "random": True})
            save_checkpoint(ckpt, target, force=True)
            info["build_s"] = round(time.perf_counter() - t0, 3)
    return target, info


# ----------------------------------------------------------------------------------------------- helpers


def percentiles(values: list[float]) -> dict[str, Any] | None:
    """n, p50/p95/p99 (linear interpolation between order statistics), mean, min, max; in the unit given."""
    if not values:
        return None
    v = sorted(values)

    def pct(q: float) -> float:
        pos = (len(v) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return {"n": len(v), "p50": round(pct(0.5), 3), "p95": round(pct(0.95), 3), "p99": round(pct(0.99), 3),
            "mean": round(statistics.fmean(v), 3), "min": round(v[0], 3), "max": round(v[-1], 3)}


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(), "platform": platform.platform(terse=True), "loadavg": load,
    }


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# A child's ru_maxrss is useless here: Linux keeps the high-water mark across fork/vfork + exec, so every child
# "peaks" at least at this (large) process's RSS. Children report their own VmHWM (fresh after exec) at exit instead.
_HWM_PRELUDE = (
    "import atexit, os\n"
    "def _t2l_hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            open(os.environ['T2L_BENCH_HWM'], 'w').write(line.split()[1])\n"
    "atexit.register(_t2l_hwm)\n"
)


def _run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float | None, str, str]:
    """Run `python -c CODE ARGS...` or `python -m t2lcli ARGS...`; returns (exit code, wall seconds, the child's own
    peak RSS in MiB (VmHWM; None where /proc is missing), stdout, stderr). The child's CPU seconds (user + system,
    all threads) are kept in `_LAST_CHILD_CPU`."""
    if cmd[1] == "-m":  # run the module through the prelude so that it reports its peak RSS
        cmd = [cmd[0], "-c", _HWM_PRELUDE + f"import runpy, sys; sys.argv = ['t2l'] + sys.argv[1:]; runpy.run_module({cmd[2]!r}, run_name='__main__')", *cmd[3:]]
    elif cmd[1] == "-c":
        cmd = [cmd[0], "-c", _HWM_PRELUDE + cmd[2], *cmd[3:]]
    with tempfile.TemporaryDirectory(prefix="t2l-child-") as tmp:
        hwm = Path(tmp) / "hwm"
        env = dict(env or os.environ, T2L_BENCH_HWM=str(hwm))
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, check=False)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            _LAST_CHILD_CPU[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            out.seek(0)
            err.seek(0)
            peak = round(int(hwm.read_text()) / 1024, 1) if hwm.is_file() and hwm.read_text().strip().isdigit() else None
            return proc.returncode, wall, peak, out.read().decode(errors="replace"), err.read().decode(errors="replace")


_LAST_CHILD_CPU = [0.0]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["T2L_PROGRESS"] = ""
    return env


IMPORTS_CODE = (
    "import time; t0 = time.perf_counter()\n"
    "import t2lcli.cli, t2lcli.engine.run_generate, t2lcli.engine.generate, t2lcli.engine.encoder, t2lcli.engine.bert\n"
    "import torch, safetensors.torch, tokenizers\n"
    "print(time.perf_counter() - t0)\n"
)


# ----------------------------------------------------------------------------------------------- the benchmark


def run_bench(req: BenchRequest, profile: Profile) -> dict[str, Any]:
    """Run the whole benchmark and return the `t2l-bench/1` report.

    Raises:
        InputError: bad runs/batch/baseline values or unknown shapes.
        T2LError: CUDA asked for by the profile but unavailable, unreadable checkpoint.
    """
    validate_request(req)
    import torch

    from t2lcli.engine.base_model import resolve_device
    from t2lcli.engine.generate import Generator

    device = resolve_device(profile.hypernet.device)
    enc_device = resolve_device(profile.encoder.device)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_info()
    info: dict[str, Any] = {}
    if req.checkpoint is not None:
        ckpt_path = req.checkpoint
        shape_name = None
    else:
        shape_name = req.shapes or "smollm2-135m"
        path, info = build_shapes_checkpoint(shape_name, req.variant)
        ckpt_path = str(path)

    stages: dict[str, float] = {}
    console.log("measuring imports (fresh interpreter)")
    imports = []
    for _ in range(max(1, min(3, req.cold_runs))):
        code, wall, _, out, err = _run_child([sys.executable, "-c", IMPORTS_CODE], env=_child_env())
        if code != 0:
            raise T2LError(f"the import probe failed: {err.strip().splitlines()[-1] if err.strip() else code}")
        imports.append(float(out.strip().splitlines()[-1]) * 1000)
    stages["imports"] = round(statistics.median(imports), 3)

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
    ckpt = gen.ckpt
    cuda = device.startswith("cuda") or enc_device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    from t2lcli.engine.adapters import save_adapter
    from t2lcli.engine.generate import GenerateOptions

    opts = GenerateOptions()
    t0 = time.perf_counter()
    gen.generate([DESCRIPTIONS[0]], opts)  # first call pays one-time kernel/allocator warm-up (and kernel choice, once per machine)
    stages["first_generate"] = round((time.perf_counter() - t0) * 1000, 3)
    embed_t, fwd_t, build_t, warm, warm_write, write_t, warm_cpu = [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="t2l-bench-") as tmpdir:
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
            adapter = _build(gen, fac, desc, opts)
            t3 = time.perf_counter()
            warm_cpu.append((time.process_time() - c0) * 1000)
            save_adapter(adapter, Path(tmpdir) / f"w{i}", force=True)
            t4 = time.perf_counter()
            embed_t.append((t1 - t0) * 1000)
            fwd_t.append((t2 - t1) * 1000)
            build_t.append((t3 - t2) * 1000)
            write_t.append((t4 - t3) * 1000)
            warm.append((t3 - t0) * 1000)
            warm_write.append((t4 - t0) * 1000)
        stages.update(embed=_med(embed_t), hypernet_forward=_med(fwd_t), adapter_build=_med(build_t), adapter_write=_med(write_t))
        from t2lcli.engine import kernels

        recorded = []  # the GEMMs of one description, per run: the stage split and the shapes the floor is timed on
        for i in range(min(req.runs, 5)):
            with kernels.record() as calls:
                gen.factors(gen.embed([DESCRIPTIONS[i % len(DESCRIPTIONS)]]))
            recorded.append(list(calls))

        throughput = []
        batch_calls: dict[int, list[Any]] = {}
        for b in req.batch:
            descs = [DESCRIPTIONS[i % len(DESCRIPTIONS)] + f" (variant {i})" for i in range(b)]
            reps = 3 if b <= 8 else 2
            times = []
            for _ in range(reps):
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

        peak_vram = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
        cold, cold_rss, cold_cpu, cold_stages = _cold_runs(req, ckpt_path, tmpdir)

    memory = {"peak_rss_mb": _peak_rss_mb(), "cold_generate_peak_rss_mb": cold_rss, "peak_vram_mb": peak_vram}
    floor = None
    if not cuda:  # measured after the peak RSS: a packed oneDNN copy of the largest weight exists while it is timed
        console.log("measuring the floor: the same GEMM shapes with every kernel in this process")
        floor = measure_floor(stages, percentiles(warm), recorded, batch_calls, throughput)
        floor["cold"] = cold_floor(stages, cold_stages, percentiles(cold), ckpt_path, gen)
    if shape_name:
        shape_cfg = load_shape(shape_name)["config"]
    else:
        shape_cfg = base_config(ckpt.base_model, hub_cache=False, known_shapes=False)
    load_base = None
    if req.baseline != "none":
        if shape_cfg is None:
            console.warn(f"no config.json for the base {ckpt.base_model}: the load-the-base baseline is skipped")
        else:
            load_base = baseline_load_base(shape_name or _safe_name(ckpt.base_model), shape_cfg, req.baseline)
    prompt = baseline_prompt(shape_name, ckpt.base_model, shape_cfg)
    warm_p = percentiles(warm)
    cold_p = percentiles(cold)
    if load_base is not None:
        load_base["total_s"] = round(load_base["import_s"] + load_base["full_load_s"], 3)
        load_base["ratio_vs_warm"] = round((load_base["full_load_s"] * 1000 + warm_p["p50"]) / warm_p["p50"], 1)
        if cold_p:
            load_base["ratio_vs_cold"] = round((load_base["total_s"] * 1000 + cold_p["p50"]) / cold_p["p50"], 2)
    c = ckpt.config
    report = {
        "schema": SCHEMA,
        "t2l_version": __version__,
        "date": date,
        "machine": machine,
        "config": {
            "shapes": shape_name, "checkpoint": None if shape_name else str(ckpt_path), "variant": c.variant,
            "profile": profile.name, "base_model": ckpt.base_model,
            "encoder": info.get("encoder", ckpt.encoder.model), "encoder_note": info.get("encoder_note"),
            "hypernet_params": ckpt.hypernet.n_params(), "latent": c.latent, "head_in": c.head_in, "r": c.r,
            "target_modules": list(c.target_modules), "n_layers": c.n_layers, "device": device,
            "dtype": profile.hypernet.dtype, "encoder_dtype": str(gen.encoder.dtype).removeprefix("torch."),
            "runs": req.runs, "cold_runs": req.cold_runs, "batch": list(req.batch),
        },
        "stages_ms": stages,
        "warm_ms": warm_p,
        "warm_write_ms": percentiles(warm_write),
        "cold_ms": cold_p,
        "cpu_time_ms": {"warm": percentiles(warm_cpu), "cold": percentiles(cold_cpu),
                        "note": "process CPU time (user + system, all threads): the work, independent of other load"},
        "throughput": throughput,
        "memory": memory,
        "baselines": {"load_base": load_base, "prompt": prompt},
        "floor": floor,
    }
    report["targets"] = evaluate_targets(report)
    return report


FLOOR_STAGES = ("encoder", "trunk", "heads")


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


def torch_ops() -> Any:
    import torch

    return torch.ops.mkldnn


def _time_shape(rows: int, module: Any, names: list[str]) -> dict[str, float]:
    """Seconds per call of an [rows, K] x this module's weight GEMM, per kernel (best of a few; one run if slow)."""
    import torch
    from torch.nn import functional as F

    from t2lcli.engine import kernels

    w, b = module.weight.detach(), None if module.bias is None else module.bias.detach()
    x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    out: dict[str, float] = {}
    with torch.no_grad():
        for name in names:
            if w.dtype != torch.float32:  # a bf16 stage: torch's and oneDNN's bf16 GEMM on its own weight
                if name in ("torch-bf16", "onednn-bf16"):
                    try:
                        out[name] = kernels.time_gemm(lambda name=name: kernels.gemm(x, w, b, name.split("-")[0]))
                    except RuntimeError:  # a oneDNN build without bf16 on this CPU
                        pass
            elif name in kernels.KERNELS:
                out[name] = kernels.time_gemm(lambda name=name: kernels.gemm(x, w, b, name))
            elif name == "onednn-packed":
                packed = torch_ops()._reorder_linear_weight(w, rows)
                out[name] = kernels.time_gemm(lambda packed=packed: torch_ops()._linear_pointwise(x, packed, b, "none", [], ""))
                del packed
            elif name == "torch-bf16":
                wb, xb = w.to(torch.bfloat16), x.to(torch.bfloat16)
                bb = None if b is None else b.to(torch.bfloat16)
                out[name] = kernels.time_gemm(lambda xb=xb, wb=wb, bb=bb: F.linear(xb, wb, bb))
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
            times = memo[(m, k, n, dtype)] = _time_shape(m, module, names if dtype == "float32" else ["torch-bf16", "onednn-bf16"])
        same = [name for name in times if (name in ("torch-bf16", "onednn-bf16")) == (dtype != "float32")]
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
    heads_ms = statistics.median([sum(c[5] for c in run if c[0] == "heads") * 1000 for run in recorded]) if recorded else 0.0
    measured = {"encoder": stages.get("embed", 0.0), "heads": heads_ms, "trunk": max(0.0, stages.get("hypernet_forward", 0.0) - heads_ms)}
    rows = []
    for stage in FLOOR_STAGES:
        p = per.get(stage)
        if p is None:
            continue
        m_ms, f_ms = round(measured[stage], 3), round(p["floor_ms"], 3)
        rows.append({"stage": stage, "measured_ms": m_ms, "floor_ms": f_ms, "ratio": round(m_ms / f_ms, 2) if f_ms else None, "gemms": p["gemms"],
                     "gflop": round(p["gflop"], 6), "gemm_ms": round(p["gemm_ms"], 3), "kernel": _label(p["kernels"]),
                     "floor_kernel": _label(p["floor_kernels"]), "dtype": p["dtype"],
                     "bf16_floor_ms": None if p["bf16_ms"] is None else round(p["bf16_ms"], 3)})
    floor_total = sum(r["floor_ms"] for r in rows)
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
        "method": "the hot path's GEMM shapes (recorded), each timed with every fp32 kernel in this process (best of 3 after a warm-up); "
                  "floor = the fastest per shape, summed as run; measured includes everything else a stage does; "
                  "bf16_floor_ms (native bf16 CPUs only): the same GEMMs in bf16, for reference (not fp32 results)",
        "kernels_tried": names, "policy": _policy_of(recorded), "cpu": model, "flags": flags,
        "stages": rows,
        "total": {"measured_ms": total, "floor_ms": round(floor_total, 3),
                  "ratio": round(total / floor_total, 2) if total and floor_total else None,
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


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _build(gen: Any, fac: Any, desc: str, opts: Any) -> Any:
    """The PEFT tensors for one description, as `Generator.adapters_from_embeddings` builds them."""
    from t2lcli.engine.adapters import Adapter, peft_config
    from t2lcli.engine.hypernet import lora_state_dict

    c = gen.ckpt.config
    paths = {m: s.path for m, s in gen.ckpt.shape.modules.items()}
    config = peft_config(c.r, c.lora_alpha, list(c.target_modules), gen.ckpt.base_model, use_rslora=opts.scaling == "rslora")
    return Adapter(config, lora_state_dict(paths, fac, 0), {"description": desc})


def validate_request(req: BenchRequest) -> None:
    """Bad input fails before anything is built or measured."""
    if req.runs < 1:
        raise InputError(f"--runs must be at least 1, got {req.runs}")
    if req.cold_runs < 0:
        raise InputError(f"--cold-runs must be 0 or more, got {req.cold_runs}")
    if not req.batch or any(b < 1 for b in req.batch):
        raise InputError("--batch needs positive sizes, e.g. --batch 1,8,64")
    if req.baseline not in ("auto", "full", "sampled", "none"):
        raise InputError(f"--baseline must be auto, full, sampled or none, got '{req.baseline}'")
    if req.variant not in ("L", "M", "S"):
        raise InputError(f"--variant must be L, M or S, got '{req.variant}'")
    if req.checkpoint is not None and req.shapes is not None:
        raise InputError("give --checkpoint or --shapes, not both")
    if req.shapes is not None:
        load_shape(req.shapes)


def parse_batch(text: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64] (InputError otherwise)."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--batch must be comma-separated integers, got {show_value(text)}", hint="e.g. --batch 1,8,64") from None
    if not sizes or any(s < 1 for s in sizes):
        raise InputError(f"--batch sizes must be positive, got {show_value(text)}")
    return sizes


def _cold_runs(req: BenchRequest, ckpt_path: str, tmpdir: str) -> tuple[list[float], float | None, list[float], dict[str, float]]:
    """Fresh `t2l generate` processes, end to end; returns wall times (ms), the largest child peak RSS (MiB), the
    children's CPU times (ms, user + system over all threads) and the medians of the stage timings they report."""
    walls, rss, cpus = [], [], []
    reported: dict[str, list[float]] = {}
    for i in range(req.cold_runs):
        out = Path(tmpdir) / f"cold{i}"
        cmd = [sys.executable, "-m", "t2lcli", "generate", DESCRIPTIONS[i % len(DESCRIPTIONS)], "-c", ckpt_path, "-o", str(out), "--json"]
        if req.profile_name:
            cmd += ["--profile", req.profile_name]
        for item in req.set_:
            cmd += ["--set", item]
        code, wall, peak, stdout, err = _run_child(cmd, env=_child_env())
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
            raise T2LError(f"cold `t2l generate` run failed: {last}")
        try:
            data = json.loads(stdout)
            timings = (data["results"][0] if "results" in data else data)["timings_ms"]
            for k, v in timings.items():
                reported.setdefault(k, []).append(float(v))
        except (ValueError, KeyError, IndexError, TypeError):
            pass
        walls.append(wall * 1000)
        cpus.append(_LAST_CHILD_CPU[0] * 1000)
        if peak is not None:
            rss.append(peak)
        console.log(f"cold run {i + 1}/{req.cold_runs}: {wall:.2f} s")
    return walls, (max(rss) if rss else None), cpus, {k: _med(v) for k, v in reported.items()}


def _safe_name(base: str) -> str:
    import hashlib

    return "base-" + hashlib.sha256(base.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- baselines


def base_param_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of a decoder-only base from config.json: embeddings, lm_head, decoder linears, norms."""
    h, n_layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    nh = int(config["num_attention_heads"])
    nkv = int(config.get("num_key_value_heads") or nh)
    hd = int(config.get("head_dim") or h // nh)
    inter, vocab = int(config["intermediate_size"]), int(config["vocab_size"])
    per_layer = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * inter
    norms_per_layer = (4 if config.get("model_type") in ("gemma2", "gemma3", "gemma3_text") else 2) * h
    embed = vocab * h
    return {
        "embed": embed, "lm_head": 0 if config.get("tie_word_embeddings") else embed, "linears": per_layer * n_layers,
        "linears_per_layer": per_layer, "norms": norms_per_layer * n_layers + h, "n_layers": n_layers,
        "total": embed + (0 if config.get("tie_word_embeddings") else embed) + per_layer * n_layers + norms_per_layer * n_layers + h,
    }


def _random_base(name: str, config: dict[str, Any], depth: int, dtype: str) -> Path:
    """A base folder of the real widths at `depth` layers, random weights, cached under $T2L_HOME/bench."""
    import torch

    from t2lcli.engine.atomic import atomic_dir, file_lock

    target = bench_home() / f"base-{name}-{dtype}-d{depth}"
    with file_lock(bench_home() / f".base-{name}.lock"):
        if (target / "model.safetensors").is_file():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM

        from t2lcli.engine.atomic import write_safetensors
        from t2lcli.engine.fastload import meta_device

        cfg = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype", "transformers_version", "_name_or_path")}
        cfg["num_hidden_layers"] = depth
        hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
        with meta_device():
            model = AutoModelForCausalLM.from_config(hf_cfg)
        tdtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(0)
        state = {}
        for key, p in model.named_parameters():  # tied weights appear once, as save_pretrained writes them
            t = torch.empty(p.shape, dtype=tdtype)
            if p.dim() > 1:
                t.uniform_(-0.02, 0.02, generator=gen)
            else:
                t.fill_(1.0)
            state[key] = t
        console.log(f"writing a random {name} base with {depth} layer(s) ({sum(t.numel() for t in state.values()) / 1e9:.2f}B params, {dtype}) to {target}")
        with atomic_dir(target, force=True, cache=True) as tmp:
            write_safetensors(state, tmp / "model.safetensors")
            cfg_out = {**json.loads(hf_cfg.to_json_string()), "dtype": dtype}
            cfg_out.pop("torch_dtype", None)
            (tmp / "config.json").write_text(json.dumps(cfg_out, indent=2))
        del state, model
    return target


BASELINE_CODE = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from transformers import AutoModelForCausalLM\n"
    "from transformers.utils import logging\n"
    "logging.disable_progress_bar()\n"
    "t1 = time.perf_counter()\n"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))\n"
    "t2 = time.perf_counter()\n"
    "with torch.no_grad():  # weights may still be memory-mapped: copy every byte once, as a first forward reads them\n"
    "    for p in m.parameters():\n"
    "        torch.empty_like(p).copy_(p)\n"
    "t3 = time.perf_counter()\n"
    "print(json.dumps({'import_s': t1 - t0, 'load_s': t3 - t1, 'from_pretrained_s': t2 - t1, 'page_in_s': t3 - t2,\n"
    "                  'params': sum(p.numel() for p in m.parameters())}))\n"
)


SAMPLED_DEPTH = 4


def baseline_load_base(name: str, config: dict[str, Any], mode: str = "auto", dtype: str = "bfloat16", repeats: int = 3) -> dict[str, Any]:
    """Time the reference's first step, loading the base (random weights, real shapes) with transformers, in a fresh process.

    Bases larger than `FULL_BASE_LIMIT` (or mode 'sampled') are loaded at depth 4 (`SAMPLED_DEPTH`: embeddings, head and
    4 decoder layers) and scaled to full depth by bytes: `from_pretrained`'s time as measured (mostly fixed: building
    the model, mapping the file) plus the time to read every weight byte times full bytes / sampled bytes. Reading is
    the part that grows with depth and is timed over GBs, so this is stable where a slope between two depths (a few
    hundred ms of difference, times 28 layers) was not. Each load runs `repeats` times and the fastest counts (the page
    cache holds the file after the first read, so this is a lower bound on a real load from disk).
    """
    counts = base_param_counts(config)
    n = counts["n_layers"]
    nbytes = counts["total"] * 2
    full = mode == "full" or (mode == "auto" and nbytes <= FULL_BASE_LIMIT) or n <= SAMPLED_DEPTH
    depth = n if full else SAMPLED_DEPTH
    sampled_bytes = nbytes - (n - depth) * counts["linears_per_layer"] * 2
    folder = _random_base(name, config, depth, dtype)
    runs, imports, rss = [], [], []
    for _ in range(repeats):
        code, _, peak, out, err = _run_child([sys.executable, "-c", BASELINE_CODE, str(folder), dtype], env=_child_env())
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
            raise T2LError(f"the load-the-base baseline failed: {last}")
        runs.append(json.loads(out.strip().splitlines()[-1]))
        imports.append(runs[-1]["import_s"])
        if peak is not None:
            rss.append(peak)
    best = min(runs, key=lambda r: r["load_s"])
    console.log(f"baseline: {name} base at depth {depth} loads in {best['load_s']:.2f} s")
    if full:
        full_s, how = best["load_s"], "measured at full depth"
    else:
        full_s = best["from_pretrained_s"] + best["page_in_s"] * nbytes / sampled_bytes
        how = (f"depth {depth} measured ({sampled_bytes / 2**30:.1f} GiB); from_pretrained {best['from_pretrained_s']:.2f} s as measured + "
               f"reading {best['page_in_s']:.2f} s x {nbytes / sampled_bytes:.2f} (full / sampled bytes)")
    read_rate = sampled_bytes / best["page_in_s"] / 2**30 if best["page_in_s"] > 0 else None
    return {
        "method": "fresh process: import transformers; AutoModelForCausalLM.from_pretrained(random safetensors of the real shapes), "
                  "then every weight byte read once (from_pretrained may leave safetensors memory-mapped; touching one value per page "
                  "measured only the mapping, ~5 ms per 436 MB Llama layer)",
        "dtype": dtype, "base_params": counts["total"], "base_bytes": nbytes, "depths": [depth],
        "load_s": {str(depth): round(best["load_s"], 3)}, "from_pretrained_s": round(best["from_pretrained_s"], 3),
        "per_layer_s": None if full else round(best["page_in_s"] * counts["linears_per_layer"] * 2 / sampled_bytes, 4),
        "read_s": round(best["page_in_s"], 3), "read_gib_per_s": None if read_rate is None else round(read_rate, 2),
        "full_load_s": round(full_s, 3), "extrapolated": not full, "estimate": how, "import_s": round(min(imports), 3),
        "peak_rss_mb": max(rss) if rss else None, "page_cache": "warm (a lower bound on a cold read from disk)",
    }


def _tokenizer_for(shape_name: str | None, base: str) -> tuple[Any, str, str]:
    """(tokenizers.Tokenizer, name, note): the base's own tokenizer offline, or a named stand-in."""
    from tokenizers import Tokenizer

    from t2lcli import models as registry
    from t2lcli.engine.base_model import converted_dir

    own: list[Path] = [Path(base)]
    entry = registry.lookup(base) or (registry.lookup(load_shape(shape_name)["registry_name"]) if shape_name else None)
    if entry is not None and entry.source == "gguf-package":
        own.append(converted_dir(entry))
    if entry is not None and entry.source == "hub":
        try:
            from huggingface_hub import snapshot_download

            own.append(Path(snapshot_download(entry.hub_id, allow_patterns=["tokenizer.json"], local_files_only=True)))
        except Exception:
            pass
    for folder in own:
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(folder / "tokenizer.json")), entry.name if entry else str(folder), "the base's own tokenizer"
    smol = converted_dir(registry.REGISTRY["smollm2-135m-instruct"])
    if (smol / "tokenizer.json").is_file():
        return (Tokenizer.from_file(str(smol / "tokenizer.json")), "smollm2-135m-instruct",
                "stand-in: the base's tokenizer is not available offline; SmolLM2's BPE (49k vocab) counts instead")
    from t2lcli.engine.base_model import resolve_model

    mini = resolve_model("all-minilm-l6-v2", kind="encoder")
    return (Tokenizer.from_file(str(mini / "tokenizer.json")), "all-minilm-l6-v2",
            "stand-in: no decoder tokenizer is available offline; bert-base-uncased WordPiece counts instead")


def baseline_prompt(shape_name: str | None, base: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens added to every request by the description-in-prompt and 3-shot alternatives (T2L adds none)."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    tok, name, note = _tokenizer_for(shape_name, base)
    tok.no_truncation()  # an encoder's tokenizer.json (MiniLM's: 128) would cap the 3-shot count
    tok.no_padding()
    sep = data["separator"]
    desc_text = data["description"] + sep
    shots = sep.join(data["example_template"].format(**ex) for ex in data["examples"]) + sep
    n_desc = len(tok.encode(desc_text, add_special_tokens=False).ids)
    n_icl = len(tok.encode(shots, add_special_tokens=False).ids)
    kv = None
    if config is not None:
        h, nh = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = 2 * int(config["num_hidden_layers"]) * int(config.get("num_key_value_heads") or nh) * int(config.get("head_dim") or h // nh) * 2
    return {
        "tokenizer": name, "tokenizer_note": note, "description_tokens": n_desc, "icl_3shot_tokens": n_icl,
        "desc_plus_icl_tokens": n_desc + n_icl, "t2l_tokens": 0, "kv_bytes_per_token": kv,
        "texts": {"description": data["description"], "examples": len(data["examples"])},
    }


# ----------------------------------------------------------------------------------------------- targets

TARGETS = {
    # shapes -> [(name, json path, comparison, value, unit)]
    "smollm2-135m": [
        ("warm p50", ("warm_ms", "p50"), "<", 30.0, "ms"),
        ("cold t2l generate p50", ("cold_ms", "p50"), "<", 3000.0, "ms"),
        ("throughput at batch 64", ("throughput", 64), ">=", 100.0, "adapters/s"),
    ],
    "llama-3.1-8b": [
        ("warm p50", ("warm_ms", "p50"), "<", 300.0, "ms"),
        ("load-the-base / warm generate", ("baselines", "ratio_vs_warm"), ">=", 10.0, "x"),
    ],
}


FLOOR_TARGETS = {"smollm2-135m": 1.5, "llama-3.1-8b": 1.3, "gemma-2-2b": 1.3}  # warm p50 / floor, same run


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that apply to this configuration, each with the measured value and met/not met."""
    shape = report["config"]["shapes"]
    if report["config"]["variant"] != "L":
        return []
    rows = []
    floor = report.get("floor") or {}
    goal = FLOOR_TARGETS.get(shape or "")
    if goal and floor.get("total", {}).get("ratio") is not None:
        v = floor["total"]["ratio"]
        rows.append({"name": "warm p50 / floor", "value": v, "target": f"<= {goal:g}", "unit": "x", "met": v <= goal, "cpu_time": None})
    if shape == "smollm2-135m":
        frac = next((t["fraction"] for t in floor.get("throughput", []) if t["batch"] == 64), None)
        if frac is not None:
            rows.append({"name": "batch 64 throughput / floor's", "value": round(frac, 3), "target": ">= 0.7", "unit": "",
                         "met": frac >= 0.7, "cpu_time": None})
    for name, (section, key), op, target, unit in TARGETS.get(shape or "", []):
        value = None
        if section == "throughput":
            value = next((t["adapters_per_s"] for t in report["throughput"] if t["batch"] == key), None)
        elif section == "baselines":
            lb = report["baselines"]["load_base"]
            value = lb.get(key) if lb else None
        elif report.get(section):
            value = report[section][key]
        met = None if value is None else (value < target if op == "<" else value >= target)
        cpu = None
        if section in ("warm_ms", "cold_ms"):
            part = (report.get("cpu_time_ms") or {}).get(section.split("_")[0])
            cpu = part[key] if part else None
        rows.append({"name": name, "value": value, "target": f"{op} {target:g}", "unit": unit, "met": met, "cpu_time": cpu})
    if report["machine"]["gpu"] and shape == "smollm2-135m" and report["config"]["device"].startswith("cuda"):
        v = report["warm_ms"]["p50"]
        rows.append({"name": "warm p50 on GPU", "value": v, "target": "< 10", "unit": "ms", "met": v < 10})
    return rows


# ----------------------------------------------------------------------------------------------- memory plan

GIB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


def plan_memory(shape_name: str, profile: Profile, context: int = 2048, batch: int | None = None, variant: str = "L") -> dict[str, Any]:
    """GPU memory budget of a profile for a base of these shapes, the hypernetwork and the encoder.

    Generation workload: `batch` sequences of `context` tokens prefilled with the adapter applied, KV cache kept,
    logits for the last position only (as `generate` does). Returns lines (GiB), total, usable and fits.
    """
    from t2lcli.engine.hypernet import count_params_formula

    shape = load_shape(shape_name)
    cfg = shape["config"]
    counts = base_param_counts(cfg)
    b = batch or profile.base.batch_size
    base_dt = _BYTES.get(profile.base.dtype, 2)
    q = profile.base.quantization
    lines: list[dict[str, Any]] = []

    def add(item: str, nbytes: float, detail: str, on_gpu: bool = True) -> None:
        lines.append({"item": item, "gib": round(nbytes / GIB, 3) if on_gpu else 0.0, "detail": detail,
                      **({} if on_gpu else {"host_gib": round(nbytes / GIB, 3)})})

    on_gpu = profile.base.device.startswith(("cuda", "auto"))
    other = counts["embed"] + counts["lm_head"] + counts["norms"]
    if q == "none":
        add("base weights", counts["total"] * base_dt, f"{counts['total'] / 1e9:.2f}B params x {base_dt} B ({profile.base.dtype})", on_gpu)
    else:
        per = 1.0 if q == "8bit" else 0.5625  # nf4 0.5 B + one fp32 absmax per 64 weights
        add(f"base decoder linears ({q})", counts["linears"] * per, f"{counts['linears'] / 1e9:.2f}B params x {per:g} B", on_gpu)
        add("base embeddings/lm_head/norms", other * base_dt, f"{other / 1e9:.2f}B params x {base_dt} B (not quantized)", on_gpu)
    hcfg = hypernet_config(shape, variant)
    hparams = count_params_formula(hcfg)
    zero = 0
    if hcfg.ab_offset:
        zero = sum(hcfg.n_layers * hcfg.r * (d_in + d_out) for d_in, d_out in hcfg.module_dims.values())
    hdt = _BYTES.get(profile.hypernet.dtype, 4)
    add("hypernetwork", (hparams + zero) * hdt,
        f"{variant} {hcfg.latent}/{hcfg.head_in}: {hparams / 1e6:.2f}M params (+{zero / 1e6:.2f}M zero offsets) x {hdt} B",
        profile.hypernet.device.startswith(("cuda", "auto")))
    enc_params = 434_000_000 if "gte" in shape["encoder"] else 22_700_000
    edt = _BYTES.get(profile.encoder.dtype, 2 if profile.encoder.device.startswith("cuda") else 4)  # auto: bf16 on CUDA, at most fp32
    add("text encoder", enc_params * edt, f"{shape['encoder']}: {enc_params / 1e6:.0f}M params x {edt} B ({profile.encoder.device})",
        profile.encoder.device.startswith(("cuda", "auto")))
    h, nh = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    nkv, hd = int(cfg.get("num_key_value_heads") or nh), int(cfg.get("head_dim") or h // nh)
    act_dt = 2 if q != "none" else base_dt
    per_token = 2 * counts["n_layers"] * nkv * hd * act_dt
    add("KV cache", per_token * b * context, f"{per_token // 1024} KiB/token x batch {b} x {context} tokens", on_gpu)
    inter = int(cfg["intermediate_size"])
    act = b * context * (3 * inter + 2 * h) * act_dt
    add("prefill activations", act, f"batch {b} x {context} x (3 x {inter} MLP + 2 x {h}) x {act_dt} B", on_gpu)
    add("logits (last position)", b * int(cfg["vocab_size"]) * 4, f"batch {b} x {cfg['vocab_size']} x 4 B", on_gpu)
    if on_gpu:  # a CPU profile has no CUDA context: no GPU rows at all
        add("CUDA context + allocator slack", 0.8 * GIB, "measured 0.5-0.8 GiB on recent drivers", on_gpu)
    total = sum(line["gib"] for line in lines)
    budget = profile.memory_budget_gb
    usable = max(0.0, budget - 1.0) if budget else None
    return {
        "schema": "t2l-bench-plan/1", "shapes": shape_name, "profile": profile.name, "context": context, "batch": b, "lines": lines,
        "total_gib": round(total, 2), "budget_gib": budget or None, "usable_gib": usable,
        "fits": None if usable is None else total <= usable,
        "host_gib": round(sum(line.get("host_gib", 0.0) for line in lines), 2),
        "gpu": any("host_gib" not in line for line in lines),
    }


def default_plan_shapes(profile: Profile) -> str:
    """The model a profile is designed for: the GPU profiles size Llama-3.1-8B, the CPU profile the embedded SmolLM2."""
    on_gpu = profile.base.device.startswith(("cuda", "auto"))
    return "llama-3.1-8b" if on_gpu and profile.memory_budget_gb >= 16 else "smollm2-135m"


def measure_memory(shape_name: str, profile: Profile, context: int = 2048, batch: int | None = None) -> dict[str, Any]:
    """On CUDA: load the real-shaped random base with the profile's settings, the hypernetwork and encoder, generate an
    adapter, apply it and run a prefill forward; returns the measured peak next to the plan.

    Raises:
        T2LError: no CUDA, or the profile quantizes without bitsandbytes.
    """
    import torch

    if not torch.cuda.is_available():
        raise T2LError("--measure needs a CUDA GPU; this machine has none", hint="drop --measure to see the plan only")
    from transformers import AutoConfig, AutoModelForCausalLM

    from t2lcli.engine.base_model import quantization_config, torch_dtype
    from t2lcli.engine.generate import Generator
    from t2lcli.engine.lora_hooks import apply_adapter

    plan = plan_memory(shape_name, profile, context, batch)
    b = plan["batch"]
    shape = load_shape(shape_name)
    cfg = {k: v for k, v in shape["config"].items() if k not in ("torch_dtype", "architectures")}
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    free0, total = torch.cuda.mem_get_info()
    torch.cuda.reset_peak_memory_stats()
    dtype = torch_dtype(profile.base.dtype)
    qconf = quantization_config(profile.base)
    if qconf is None:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    else:  # quantized: random weights on the CPU, then quantized onto the GPU by a save/load round trip
        with tempfile.TemporaryDirectory() as tmp:
            AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype).save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=qconf, device_map="cuda")
    model.eval()
    path, _ = build_shapes_checkpoint(shape_name, "L")
    gen = Generator.load(str(path), device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
                         encoder_dtype=profile.encoder.dtype)  # the encoder in the profile's dtype, as the plan counts it
    adapter = gen.generate([DESCRIPTIONS[0]])[0]
    ids = torch.randint(0, int(cfg["vocab_size"]), (b, context), device="cuda")
    with torch.no_grad(), apply_adapter(model, adapter):
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB
    free1, _ = torch.cuda.mem_get_info()
    planned = plan["total_gib"] - next((line["gib"] for line in plan["lines"] if line["item"].startswith("CUDA context")), 0.0)
    return {**plan, "measured_peak_allocated_gib": round(peak, 2), "planned_without_context_gib": round(planned, 2),
            "relative_error": round((planned - peak) / peak, 3), "device_used_gib": round((total - free1) / GIB, 2),
            "gpu": torch.cuda.get_device_name(0), "baseline_used_gib": round((total - free0) / GIB, 2)}


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the JSON report atomically."""
    from t2lcli.engine.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())


def check_writable(path: Path) -> None:
    """Fail before measuring when --output cannot be written."""
    from t2lcli.engine.atomic import check_report_free

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"--output {path} is a folder; give a file name", hint="e.g. --output bench.json")
    check_report_free(path)
    probe = parent / f".t2l-bench-probe-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write --output {path}: {exc.strerror or exc}", hint="choose a writable location") from None


def clean_cache() -> float:
    """Remove $T2L_HOME/bench; returns the GiB freed."""
    home = bench_home()
    if not home.exists():
        return 0.0
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    shutil.rmtree(home)
    return size / GIB
