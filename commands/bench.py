"""`t2l bench`: latency, throughput, memory and baselines of adapter generation, measured here; or a memory plan."""

from pathlib import Path
from typing import Annotated, Any

import typer

from t2lcli import console
from t2lcli.errors import InputError
from t2lcli.options import CheckpointOpt, JsonOpt, ProfileOpt, SetOpt, checkpoint_spec, flag_values

EXAMPLES = """[b]Examples[/b]

  t2l bench                                               # default shapes (SmolLM2-135M + MiniLM, L 128/512)
  t2l bench --shapes llama-3.1-8b --runs 20 --batch 1,8   # the official 230M Llama-8B hypernetwork, random weights
  t2l bench --checkpoint default --json --output bench.json
  t2l bench --plan --profile gpu-16gb --shapes llama-3.1-8b
  t2l bench --plan --measure --profile gpu-24gb --shapes llama-3.1-8b   # on a GPU: plan vs measured peak
"""


def bench(
    checkpoint: CheckpointOpt = None,
    shapes: Annotated[str | None, typer.Option("--shapes", help="Random hypernetwork of official sizes: smollm2-135m, llama-3.1-8b, mistral-7b or gemma-2-2b.")] = None,
    variant: Annotated[str, typer.Option("--variant", help="Hypernetwork variant for --shapes: L, M or S.")] = "L",
    runs: Annotated[int, typer.Option("--runs", help="Warm (in-process) repetitions.")] = 20,
    cold_runs: Annotated[int, typer.Option("--cold-runs", help="Fresh `t2l generate` processes (0 skips the cold measurement).")] = 5,
    batch: Annotated[str, typer.Option("--batch-size", "--batch", "-b", help="Batch sizes for throughput, comma-separated (-b/--batch-size as in generate and eval).")] = "1,8,64",
    baseline: Annotated[str, typer.Option("--baseline", help="Load-the-base baseline: auto (full up to 3 GiB, else depth 4 scaled to full depth by bytes), full, sampled or none.")] = "auto",
    plan: Annotated[bool, typer.Option("--plan", help="Print the profile's memory budget for --shapes (default: the profile's model) instead of benchmarking.")] = False,
    measure: Annotated[bool, typer.Option("--measure", help="With --plan, on CUDA: load the real-shaped base and measure peak VRAM.")] = False,
    context: Annotated[int, typer.Option("--context", help="--plan: tokens per sequence for the KV cache and activations.")] = 2048,
    clean: Annotated[bool, typer.Option("--clean", help="Delete the cached random models under $T2L_HOME/bench and exit.")] = False,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report to this file.")] = None,
) -> None:
    """Benchmark adapter generation: stages, cold/warm latency, throughput, memory, baselines (or --plan memory)."""
    from t2lcli.commands.render import bench as render

    from t2lcli.engine import bench as engine  # no torch at import: the flag checks below run in well under a second
    from t2lcli.hardware import load_profile

    if clean:
        console.emit(f"removed {engine.clean_cache():.2f} GiB of cached benchmark models")
        return
    with flag_values():
        if measure and not plan:
            raise InputError("--measure goes with --plan", hint="t2l bench --plan --measure --profile gpu-24gb --shapes llama-3.1-8b")
        if context < 1:
            raise InputError("--context must be at least 1")
        req = engine.BenchRequest(
            checkpoint=checkpoint, shapes=shapes, variant=variant, runs=runs, cold_runs=cold_runs, batch=engine.parse_batch(batch),
            baseline=baseline, profile_name=profile, set_=list(set_ or []),
        )
        engine.validate_request(req)
    checkpoint_spec(checkpoint)
    prof = load_profile(profile, set_)
    if output is not None:
        engine.check_writable(output)
    if plan:
        name = shapes or engine.default_plan_shapes(prof)  # the profile's model (cpu: SmolLM2, gpu-*: Llama-3.1-8B)
        report = engine.measure_memory(name, prof, context) if measure else engine.plan_memory(name, prof, context, variant=variant)
        _finish(report, json_out, output, render.print_plan)
        if report.get("fits") is False:
            raise typer.Exit(1)
        return
    _check_devices(prof)
    report = engine.run_bench(req, prof)
    _finish(report, json_out, output, render.print_report)


def _check_devices(prof: Any) -> None:
    """CUDA asked for by the profile on a machine without it: one line, before anything is built."""
    from t2lcli.engine.base_model import resolve_device

    for comp in (prof.hypernet, prof.encoder):
        resolve_device(comp.device)


def _finish(report: dict, json_out: bool, output: Path | None, printer: Any) -> None:
    if output is not None:
        from t2lcli.engine.bench import write_report

        write_report(report, output)
        console.log(f"wrote {output}")
    if json_out:
        console.emit_json(report)
    else:
        printer(report)


bench.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
