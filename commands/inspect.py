"""`t2l inspect`: what is this profile / adapter / checkpoint; will it run on a runtime; how do adapters compare?"""

from pathlib import Path
from typing import Annotated, Any

import typer

from t2lcli import console
from t2lcli.errors import InputError, UsageError
from t2lcli.options import JsonOpt, SetOpt, TrustRemoteCodeOpt, at_least
from t2lcli.runtimes import COMPAT_RUNTIMES

EXAMPLES = """[b]Examples[/b]

  t2l inspect out/math                                  # a PEFT adapter: scale, ΔW norms, effective rank, verdict
  t2l inspect out/math --compat vllm                    # checklist; exit 0 only when compatible
  t2l inspect out/math --compat peft --json
  t2l inspect out/a out/b out/c --similarity            # cosine similarity of the flattened ΔW
  t2l inspect out/ --similarity --space embedding       # of the description embeddings (every adapter under out/)
  t2l inspect out/ --plot adapters.png                  # 2-D projection coloured by task/cluster (needs matplotlib)
  t2l inspect default --json                            # a T2L checkpoint: default, a native or an official folder
  t2l inspect profile gpu-16gb --json                   # a resolved hardware profile
"""


def inspect_cmd(
    target: Annotated[list[str], typer.Argument(help="'profile NAME', adapter folder(s) (or folders of adapters), or a checkpoint folder.")],
    compat: Annotated[str | None, typer.Option("--compat", help="Check the adapter against a runtime: vllm, sglang, llamacpp, ollama or peft.")] = None,
    similarity: Annotated[bool, typer.Option("--similarity", help="Cosine-similarity matrix of the adapters.")] = False,
    space: Annotated[str, typer.Option("--space", help="Similarity/plot space: delta_w (flattened ΔW) or embedding (description embeddings).")] = "delta_w",
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw a 2-D projection of the adapters to this .png/.svg/.pdf.")] = None,
    clusters: Annotated[int | None, typer.Option("--clusters", help="--plot without task labels: number of k-means clusters (default: sqrt(n), 2-8).")] = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Show what a profile, adapter or checkpoint is; check runtime compatibility; compare adapters."""
    if target[0] == "profile":
        _profile(target, set_, json_out)
        return
    modes = [x for x in (compat is not None, similarity, plot is not None) if x]
    if len(modes) > 1:
        raise UsageError("use one of --compat, --similarity and --plot at a time")
    at_least("--clusters", clusters, 1)
    if compat is not None and len(target) != 1:
        raise UsageError("--compat checks one adapter at a time")
    if compat is not None and compat.lower() not in COMPAT_RUNTIMES:
        raise UsageError(f"unknown runtime '{compat}'", hint=f"choose one of: {', '.join(COMPAT_RUNTIMES)}")
    if space not in SPACES:
        raise UsageError(f"unknown --space '{space}'", hint="use delta_w (default) or embedding")
    _check_targets(target, adapters_only=similarity or plot is not None)
    from t2lcli.engine import inspect as engine

    if compat is not None:
        report = engine.compat_check(Path(target[0]), compat.lower())
        _emit(report, json_out, _print_compat)
        if not report["compatible"]:
            raise typer.Exit(1)
        return
    if similarity:
        _emit(engine.similarity(target, space, trust_remote_code), json_out, _print_similarity)
        return
    if plot is not None:
        _emit(engine.plot_projection(target, plot, space, clusters, trust_remote_code), json_out, _print_plot)
        return
    report = engine.inspect_paths(target)
    for r in report if isinstance(report, list) else [report]:
        if not json_out:
            _print_report(r)
    if json_out:
        console.emit_json(report)


# the engine's --space names (a test keeps them equal): checked here before the engine, which imports torch
SPACES = ("delta_w", "embedding")


def _check_targets(targets: list[str], adapters_only: bool) -> None:
    """Each target exists, is a shipped checkpoint name or reads as owner/repo/folder on the hub (as the engine reads
    them): a typo fails before torch is imported."""
    from t2lcli.engine.atomic import check_readable  # stdlib only

    for t in targets:
        hub = not t.startswith((".", "/", "~")) and t.count("/") >= 2
        check_readable(Path(t), "input")
        if adapters_only and not Path(t).exists():
            raise InputError(f"not found: {t}", hint="pass adapter folders (or a folder of adapter folders)")
        if not (Path(t).exists() or t == "default" or hub):
            raise InputError(f"not found: {t}", hint="pass an adapter folder, a checkpoint folder, 'default', or 'profile NAME'")


def _profile(target: list[str], set_: list[str] | None, json_out: bool) -> None:
    if len(target) > 2:
        raise UsageError("usage: t2l inspect profile NAME")
    from t2lcli.hardware import load_profile

    data = load_profile(target[1] if len(target) > 1 else None, set_).to_dict()
    if json_out:
        console.emit_json(data)
    else:
        import yaml

        console.emit(yaml.safe_dump(data, sort_keys=False).rstrip())


def _emit(report: dict, json_out: bool, printer: Any) -> None:
    if json_out:
        console.emit_json(report)
    else:
        printer(report)


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        if v is not None and v != "":
            t.add_row(k, str(v))
    return t


def _print_report(r: dict) -> None:
    if r["kind"] == "peft-adapter":
        _print_adapter(r)
        return
    if r["kind"].startswith("t2l-checkpoint"):
        _print_checkpoint(r)
        return
    import yaml

    console.emit(yaml.safe_dump(r, sort_keys=False, allow_unicode=True).rstrip())


def _print_adapter(r: dict) -> None:
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


def _print_checkpoint(r: dict) -> None:
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


def _print_compat(r: dict) -> None:
    from rich.markup import escape

    out = console.out_console()
    out.print(f"[b]{escape(r['path'])}[/b] on [b]{r['runtime']}[/b]")
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}
    for ch in r["checks"]:
        out.print(f"  {marks[ch['status']]} {ch['check']}: {escape(ch['detail'])}")
        if ch["fix"] and ch["status"] != "ok":
            out.print(f"      [dim]fix:[/dim] {escape(ch['fix'])}")
    out.print("[green]compatible[/green]" if r["compatible"] else "[red]not compatible[/red] (fix the ✗ items)")


def _print_similarity(r: dict) -> None:
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


def _print_plot(r: dict) -> None:
    note = f" (a random sample of {r['plotted']} of {r['adapters']})" if r["sampled"] else ""
    console.emit(f"{r['path']}: {r['plotted']} adapters{note}, {r['method']}, coloured by {r['labels']}")


inspect_cmd.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
