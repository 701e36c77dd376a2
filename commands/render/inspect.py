"""Rich printers for `t2l inspect` (the command module parses options and calls the engine; this draws the result)."""

from typing import Any

from t2lcli import console


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        if v is not None and v != "":
            t.add_row(k, str(v))
    return t


def print_report(r: dict) -> None:
    if r["kind"] == "peft-adapter":
        print_adapter(r)
        return
    if r["kind"].startswith("t2l-checkpoint"):
        print_checkpoint(r)
        return
    import yaml

    console.emit(yaml.safe_dump(r, sort_keys=False, allow_unicode=True).rstrip())


def print_adapter(r: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console.out_console()
    prov = r["provenance"]
    rows = [
        ("adapter", r["path"]), ("base model", r["base_model"]), ("description", r["description"]),
        ("rank r / alpha", f"{r['r']} / {r['lora_alpha']}"),
        ("scale", f"{r['effective_scale']:.6g} = {r['scale_rule']}" + (f", strength x{prov['scale']}" if prov.get("scale", 1.0) != 1.0 else "")),
        ("target modules", ", ".join(r["target_modules"])), ("layers", r["n_layers"]), ("dtype", ", ".join(r["dtype"])),
        ("parameters", f"{r['parameters']:,} ({r['bytes'] / 2**20:.2f} MiB)"),
        ("checkpoint", prov.get("checkpoint")), ("checkpoint sha256", prov.get("checkpoint_sha256")),
        ("encoder", prov.get("encoder")), ("tool", prov.get("tool_version") and f"t2l {prov['tool_version']}"),
        ("model card", "README.md" if r["model_card"] else "none"),
    ]
    out.print(_kv_table("", [(k, escape(str(v)) if v is not None else None) for k, v in rows]))
    mods = list(r["delta_w"]["per_module"])
    t = Table(title=f"ΔW = scale·B@A per layer (‖ΔW‖_F / effective rank of {r['r']}); total ‖ΔW‖_F = {r['delta_w']['total_norm']:.4g}",
              title_justify="left")
    t.add_column("layer", justify="right")
    for m in mods:
        t.add_column(f"{m} norm", justify="right")
        t.add_column("erank", justify="right")
    by = {(row["layer"], row["module"]): row for row in r["delta_w"]["per_layer"]}
    for layer in sorted({row["layer"] for row in r["delta_w"]["per_layer"]}):
        cells = []
        for m in mods:
            row = by.get((layer, m))
            cells += [f"{row['norm']:.4g}", f"{row['effective_rank']:.2f}"] if row else ["-", "-"]
        t.add_row(str(layer), *cells)
    out.print(t)
    s = Table(title="per module", title_justify="left")
    for col in ("module", "layers", "mean norm", "min", "max", "mean erank", "zero layers"):
        s.add_column(col, justify="left" if col in ("module", "zero layers") else "right")
    for m, v in r["delta_w"]["per_module"].items():
        s.add_row(m, str(v["layers"]), f"{v['mean_norm']:.4g}", f"{v['min_norm']:.4g}", f"{v['max_norm']:.4g}",
                  f"{v['mean_effective_rank']:.2f}", ", ".join(map(str, v["zero_layers"])) or "-")
    out.print(s)
    style = "red bold" if r["verdict"]["no_op"] else "green"
    out.print(f"[{style}]{escape(r['verdict']['message'])}[/{style}]")


def print_checkpoint(r: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console.out_console()
    enc = r["encoder"]
    rows = [
        ("checkpoint", r["path"]), ("format", r["kind"]), ("variant", f"{r['variant']} (latent {r['latent']}, head_in {r['head_in']})"),
        ("parameters", f"{r['parameters']:,} trainable ({r['parameters'] / 1e6:.2f}M) + {r['frozen_parameters']:,} frozen"),
        ("LoRA", f"r {r['r']}, alpha {r['lora_alpha']}, scale {r['scaling']:.6g} ({'rsLoRA alpha/sqrt(r)' if r['use_rslora'] else 'alpha/r'})"),
        ("encoder", f"{enc['model']} ({enc['dim']}-d, {enc['pooling']} pooling, normalize {enc['normalize']})"),
        ("base model", r["base_model"]), ("layers", r["n_layers"]), ("module order", ", ".join(r["module_order"])),
        ("adapter size", f"{r['adapter_parameters']:,} parameters per generated adapter"), ("sha256", r["sha256"]),
    ]
    rows += [(f"provenance: {k}", v) for k, v in (r.get("provenance") or {}).items() if not isinstance(v, (dict, list))]
    out.print(_kv_table("", [(k, escape(str(v)) if v is not None else None) for k, v in rows]))
    t = Table(title="base shapes", title_justify="left")
    for col in ("module", "d_in", "d_out", "PEFT key"):
        t.add_column(col, justify="right" if col.startswith("d_") else "left")
    for m, v in r["base_shapes"].items():
        t.add_row(m, str(v["d_in"]), str(v["d_out"]), escape(v["path"]))
    out.print(t)


def print_compat(r: dict) -> None:
    from rich.markup import escape

    out = console.out_console()
    out.print(f"[b]{escape(r['path'])}[/b] on [b]{r['runtime']}[/b]")
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}
    for ch in r["checks"]:
        out.print(f"  {marks[ch['status']]} {ch['check']}: {escape(ch['detail'])}")
        if ch["fix"] and ch["status"] != "ok":
            out.print(f"      [dim]fix:[/dim] {escape(ch['fix'])}")
    out.print("[green]compatible[/green]" if r["compatible"] else "[red]not compatible[/red] (fix the ✗ items)")


def print_similarity(r: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console.out_console()
    what = "flattened ΔW" if r["space"] == "delta_w" else "description embeddings"
    t = Table(title=f"cosine similarity of {what}", title_justify="left")
    t.add_column("adapter", no_wrap=True)
    for i in range(len(r["names"])):
        t.add_column(f"{i + 1}", justify="right", no_wrap=True)
    for i, (name, row) in enumerate(zip(r["names"], r["matrix"], strict=True)):
        short = name if len(name) <= 24 else name[:23] + "…"
        t.add_row(f"{i + 1} {escape(short)}", *(f"{x:.2f}" for x in row))
    needed = 30 + 8 * len(r["names"])
    if not out.is_terminal and out.width < needed:  # a matrix must not be squeezed when piped to a file
        from rich.console import Console

        out = Console(width=needed, highlight=False, soft_wrap=True)
    out.print(t)
    g = r.get("groups")
    if g:
        out.print(
            f"by {g['by']} ({g['n_groups']} groups): same {g['same_mean']:.3f} vs different {g['different_mean']:.3f} "
            f"({g['pairs_same']} / {g['pairs_different']} pairs); mean-centred: same {g['centered']['same_mean']:.3f} "
            f"vs different {g['centered']['different_mean']:.3f}"
        )


def print_plot(r: dict) -> None:
    note = f" (a random sample of {r['plotted']} of {r['adapters']})" if r["sampled"] else ""
    console.emit(f"{r['path']}: {r['plotted']} adapters{note}, {r['method']}, coloured by {r['labels']}")
