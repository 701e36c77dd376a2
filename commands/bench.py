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
        _finish(report, json_out, output, _print_plan)
        if report.get("fits") is False:
            raise typer.Exit(1)
        return
    _check_devices(prof)
    report = engine.run_bench(req, prof)
    _finish(report, json_out, output, _print_report)


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


def _print_report(r: dict) -> None:
    from rich.table import Table

    out = console.out_console()
    m, c = r["machine"], r["config"]
    out.print(f"[b]t2l bench[/b] {r['date']}  ·  {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads)  ·  "
              f"torch {m['torch']}  ·  GPU: {m['gpu'] or 'none'}  ·  load avg {m['loadavg']}")
    what = f"shapes {c['shapes']}" if c["shapes"] else f"checkpoint {c['checkpoint']}"
    out.print(f"{what}  ·  variant {c['variant']} {c['latent']}/{c['head_in']} ({c['hypernet_params'] / 1e6:.2f}M params)  ·  "
              f"encoder {c['encoder']} ({c.get('encoder_dtype', '?')})  ·  base {c['base_model']}  ·  {c['device']} {c['dtype']}")
    if c.get("encoder_note"):
        out.print(f"[dim]encoder: {c['encoder_note']}[/dim]")
    t = Table(title="stages (median)", title_justify="left")
    t.add_column("stage")
    t.add_column("ms", justify="right")
    for k, v in r["stages_ms"].items():
        t.add_row(k.replace("_", " "), f"{v:.1f}")
    out.print(t)
    lat = Table(title="latency (ms)", title_justify="left")
    for col in ("", "n", "p50", "p95", "p99", "CPU p50"):
        lat.add_column(col, justify="right" if col else "left")
    cpu = r.get("cpu_time_ms") or {}
    for label, key, ck in (("warm (in memory)", "warm_ms", "warm"), ("warm + write", "warm_write_ms", None), ("cold `t2l generate`", "cold_ms", "cold")):
        p = r[key]
        c = cpu.get(ck) if ck else None
        lat.add_row(label, *(("-",) * 4 if p is None else (str(p["n"]), f"{p['p50']:.1f}", f"{p['p95']:.1f}", f"{p['p99']:.1f}")),
                    "-" if not c else f"{c['p50']:.1f}")
    out.print(lat)
    out.print("[dim]CPU = process CPU time (user + system, all threads): the work done, whatever else the machine runs[/dim]")
    th = Table(title="throughput", title_justify="left")
    th.add_column("batch", justify="right")
    th.add_column("seconds", justify="right")
    th.add_column("adapters/s", justify="right")
    for row in r["throughput"]:
        th.add_row(str(row["batch"]), f"{row['seconds']:.3f}", f"{row['adapters_per_s']:.1f}")
    out.print(th)
    mem = r["memory"]
    out.print(f"peak RSS: {mem['peak_rss_mb']:.0f} MiB (bench process), "
              f"{mem['cold_generate_peak_rss_mb'] or '-'} MiB (cold `t2l generate`)"
              + (f"; peak VRAM {mem['peak_vram_mb']:.0f} MiB" if mem["peak_vram_mb"] is not None else ""))
    b = Table(title="baselines", title_justify="left")
    b.add_column("approach")
    b.add_column("cost", justify="right")
    b.add_column("vs t2l", justify="right")
    lb = r["baselines"]["load_base"]
    warm = r["warm_ms"]["p50"]
    b.add_row("t2l generate (warm p50)", f"{warm:.1f} ms", "1x")
    if lb:
        how = f"depth {lb['depths'][0]}, scaled by bytes" if lb["extrapolated"] else "full depth"
        b.add_row(f"load the base ({lb['base_params'] / 1e9:.2f}B, {lb['dtype']}, {how}) + generate",
                  f"{lb['full_load_s'] * 1000 + warm:.0f} ms", f"{lb['ratio_vs_warm']:.0f}x slower")
        if r["cold_ms"] and lb.get("ratio_vs_cold"):
            b.add_row("cold: import transformers + load base + cold t2l", f"{lb['total_s'] * 1000 + r['cold_ms']['p50']:.0f} ms",
                      f"{lb['ratio_vs_cold']:.1f}x slower")
    pr = r["baselines"]["prompt"]
    b.add_row("task description in every prompt", f"+{pr['description_tokens']} tokens/request", "t2l: +0")
    b.add_row("3-shot in-context examples", f"+{pr['icl_3shot_tokens']} tokens/request", "t2l: +0")
    out.print(b)
    out.print(f"[dim]tokens counted with {pr['tokenizer']} ({pr['tokenizer_note']})[/dim]")
    _print_floor(r.get("floor"))
    if r["targets"]:
        tg = Table(title="targets", title_justify="left")
        for col in ("target", "measured", "goal", "met"):
            tg.add_column(col)
        for row in r["targets"]:
            val = "-" if row["value"] is None else f"{row['value']:g} {row['unit']}"
            met = "-" if row["met"] is None else ("[green]yes[/green]" if row["met"] else "[red]no[/red]")
            tg.add_row(row["name"], val, f"{row['target']} {row['unit']}", met)
        out.print(tg)


def _print_floor(f: dict | None) -> None:
    """measured / floor per stage, in total, per batch size, and the cold start against reading its files."""
    if not f:
        return
    from rich.table import Table

    out = console.out_console()
    t = Table(title=f"measured / floor (ms, fp32 unless noted; kernel policy {f['policy']}; {f['cpu']}: {' '.join(f['flags']) or 'no AVX2'})",
              title_justify="left")
    for col in ("stage", "ms", "floor", "ratio", "GFLOP", "kernel: GEMMs", "floor kernel", "bf16 floor"):
        t.add_column(col, justify="left" if col in ("stage", "kernel: GEMMs", "floor kernel") else "right")
    for row in f["stages"]:
        bf = row.get("bf16_floor_ms")
        t.add_row(row["stage"] + ("" if row["dtype"] == "float32" else f" ({row['dtype']})"), f"{row['measured_ms']:.2f}", f"{row['floor_ms']:.2f}", f"{row['ratio']:.2f}x" if row["ratio"] else "-",
                  f"{row['gflop']:.3f}", row["kernel"], row["floor_kernel"], "-" if bf is None else f"{bf:.2f}")
    tot = f["total"]
    t.add_row("[b]total[/b] (warm p50)", f"{tot['measured_ms']:.2f}", f"{tot['floor_ms']:.2f}",
              f"[b]{tot['ratio']:.2f}x[/b]" if tot["ratio"] else "-", "", "", "", "")
    out.print(t)
    for row in f["throughput"]:
        out.print(f"batch {row['batch']}: {row['adapters_per_s']:.1f} adapters/s vs floor {row['floor_adapters_per_s']:.1f} "
                  f"({row['fraction']:.0%} of the floor's throughput)")
    c = f.get("cold")
    if c and c.get("cold_p50_ms") is not None:
        out.print(f"cold `t2l generate` p50 {c['cold_p50_ms']:.0f} ms (target < {c['target_ms']:.0f}): imports {c['imports_ms']:.0f} ms, "
                  f"checkpoint load {c['checkpoint_load_ms'] or 0:.0f} ms, embed (encoder load + forward) {c['embed_ms'] or 0:.0f} ms, "
                  f"hypernet {c['hypernet_ms'] or 0:.0f} ms, write {c['write_ms'] or 0:.0f} ms; "
                  f"floor of reading its {c['files']} files ({c['bytes'] / 2**20:.0f} MiB): {c['read_ms']:.0f} ms")
    out.print("[dim]floor: the same GEMM shapes with the fastest kernel in this process (kernels tried: "
              f"{', '.join(f['kernels_tried'])}); measured includes tokenizing, attention, norms and copies[/dim]")


def _print_plan(p: dict) -> None:
    from rich.table import Table

    out = console.out_console()
    gpu = p.get("gpu", True)
    where = "" if gpu else ", host RAM: this profile puts nothing on a GPU"
    t = Table(title=f"memory plan: {p['shapes']} on profile {p['profile']} (batch {p['batch']} x {p['context']} tokens{where})", title_justify="left")
    t.add_column("item")
    t.add_column("GiB" if gpu else "host GiB", justify="right")
    t.add_column("how")
    for line in p["lines"]:
        if gpu:
            host = f" [dim](host RAM {line['host_gib']:.2f} GiB)[/dim]" if "host_gib" in line else ""
            t.add_row(line["item"], f"{line['gib']:.2f}", line["detail"] + host)
        else:
            t.add_row(line["item"], f"{line.get('host_gib', 0.0):.2f}", line["detail"])
    t.add_row("[b]total[/b]", f"[b]{p['total_gib'] if gpu else p['host_gib']:.2f}[/b]", "")
    out.print(t)
    if p["usable_gib"] is None:
        out.print("the profile declares no memory budget (memory_budget_gb: 0); nothing to fit")
    else:
        verdict = "[green]fits[/green]" if p["fits"] else "[red]does not fit[/red]"
        out.print(f"{verdict}: {p['total_gib']:.2f} GiB of {p['usable_gib']:.1f} usable ({p['budget_gib']:g} GiB card, 1 GiB kept free)")
    if "measured_peak_allocated_gib" in p:
        out.print(f"measured on {p['gpu']}: peak allocated {p['measured_peak_allocated_gib']:.2f} GiB vs planned "
                  f"{p['planned_without_context_gib']:.2f} GiB without the CUDA context ({p['relative_error']:+.1%})")


bench.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
