"""Measuring helpers of `t2l bench`: percentiles, the machine, child processes (wall, CPU, own peak RSS), cold runs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from t2lcli import console, omp
from t2lcli.engine.bench.request import DESCRIPTIONS, BenchRequest
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import T2LError

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
        "omp_wait": omp.describe(),
    }


def peak_rss_mb() -> float:
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


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float | None, str, str]:
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


def child_env() -> dict[str, str]:
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



def median_ms(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def build_adapter(gen: Any, fac: Any, desc: str, opts: Any) -> Any:
    """The PEFT tensors for one description, as `Generator.adapters_from_embeddings` builds them."""
    from t2lcli.engine.adapters import Adapter, peft_config
    from t2lcli.engine.hypernet import lora_state_dict

    c = gen.ckpt.config
    paths = {m: s.path for m, s in gen.ckpt.shape.modules.items()}
    config = peft_config(c.r, c.lora_alpha, list(c.target_modules), gen.ckpt.base_model, use_rslora=opts.scaling == "rslora")
    return Adapter(config, lora_state_dict(paths, fac, 0), {"description": desc})



def measure_cold(req: BenchRequest, ckpt_path: str, tmpdir: str) -> tuple[list[float], float | None, list[float], dict[str, float]]:
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
        code, wall, peak, stdout, err = run_child(cmd, env=child_env())
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
    return walls, (max(rss) if rss else None), cpus, {k: median_ms(v) for k, v in reported.items()}


def base_cache_name(base: str) -> str:
    import hashlib

    return "base-" + hashlib.sha256(base.encode()).hexdigest()[:12]
