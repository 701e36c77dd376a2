"""Rich printers for `t2l bench`: the benchmark report and the memory plan."""

from t2lcli import console


def print_report(r: dict) -> None:
    """The human view of a `t2l-bench/1` report: stages, latency, throughput, memory, baselines, floor, targets."""
    from rich.table import Table

    out = console.out_console()
    m, c = r["machine"], r["config"]
    out.print(f"[b]t2l bench[/b] {r['date']}  ·  {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, OpenMP wait {m.get('omp_wait', '?')})  ·  "
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
    print_floor(r.get("floor"))
    if r["targets"]:
        tg = Table(title="targets", title_justify="left")
        for col in ("target", "measured", "goal", "met"):
            tg.add_column(col)
        for row in r["targets"]:
            val = "-" if row["value"] is None else f"{row['value']:g} {row['unit']}"
            met = "-" if row["met"] is None else ("[green]yes[/green]" if row["met"] else "[red]no[/red]")
            tg.add_row(row["name"], val, f"{row['target']} {row['unit']}", met)
        out.print(tg)


def print_floor(f: dict | None) -> None:
    """measured / floor per stage, in total, per batch size, and the cold start against reading its files."""
    if not f:
        return
    from rich.table import Table

    out = console.out_console()
    t = Table(title=f"measured / floor (ms, fp32 unless noted; kernel policy {f['policy']}; {f['cpu']}: {' '.join(f['flags']) or 'no AVX2'})",
              title_justify="left")
    for col in ("stage", "ms", "floor", "ratio", "GFLOP", "kernel: GEMMs", "floor kernel", "bf16 floor"):
        text_col = col in ("stage", "kernel: GEMMs", "floor kernel")  # numbers never wrap (a busy machine's 4-digit ratios did)
        t.add_column(col, justify="left" if text_col else "right", no_wrap=not text_col)
    for row in f["stages"]:
        bf = row.get("bf16_floor_ms")
        t.add_row(row["stage"] + ("" if row["dtype"] == "float32" else f" ({row['dtype']})"), f"{row['measured_ms']:.2f}", f"{row['floor_ms']:.2f}", f"{row['ratio']:.2f}x" if row["ratio"] else "-",
                  f"{row['gflop']:.3f}", row["kernel"], row["floor_kernel"], "-" if bf is None else f"{bf:.2f}")
    tot = f["total"]
    t.add_row("[b]total[/b] (warm p50)", f"{tot['measured_ms']:.2f}", f"{tot['floor_ms']:.2f}",
              f"[b]{tot['ratio']:.2f}x[/b]" if tot["ratio"] else "-", "", "", "", "")
    out.print(t)
    if tot.get("pass_floor_ms") is not None:  # reports from before the pass floor lack it
        parts = [f"{row['stage']} {row['pass_floor_ms']:.2f} ms ({row['pass_ratio']:.2f}x)" for row in f["stages"] if row.get("pass_ratio")]
        out.print(f"pass floor (each stage's GEMMs back to back, each weight read once): {', '.join(parts)}; "
                  f"warm p50 vs all stages {tot['pass_floor_ms']:.2f} ms ({tot['pass_ratio']:.2f}x)" if tot.get("pass_ratio") else "")
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
              f"{', '.join(f['kernels_tried'])}), each timed hot; pass floor: the stage's GEMMs back to back in the pass's order "
              "(each weight read once, as a pass reads it); measured includes tokenizing, attention, norms and copies[/dim]")


def print_plan(p: dict) -> None:
    """The human view of `t2l bench --plan`: the budget line by line and whether it fits."""
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
