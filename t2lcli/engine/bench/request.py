"""What `t2l bench` was asked to do: the request, its checks before anything is measured, and the report file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import InputError, show_value

SCHEMA = "t2l-bench/1"


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
    "machine": "cpu, cores, torch_threads, torch, cuda, gpu, python, platform, loadavg (1/5/15 min at start), omp_wait (how idle OpenMP threads wait: t2lcli/omp.py)",
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
