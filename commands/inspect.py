"""`t2l inspect`: what is this profile / adapter / checkpoint; will it run on a runtime; how do adapters compare?"""

from pathlib import Path
from typing import Annotated

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
    from t2lcli.commands.render import inspect as render

    from t2lcli.engine.inspect.run import InspectRequest, run_inspect

    mode, report = run_inspect(InspectRequest(target, compat, similarity, plot, space, clusters, trust_remote_code))
    if json_out:
        console.emit_json(report)
    elif mode == "report":
        for r in report if isinstance(report, list) else [report]:
            render.print_report(r)
    else:
        {"compat": render.print_compat, "similarity": render.print_similarity, "plot": render.print_plot}[mode](report)
    if mode == "compat" and not report["compatible"]:
        raise typer.Exit(1)


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
    from t2lcli.hw_profiles import load_profile

    data = load_profile(target[1] if len(target) > 1 else None, set_).to_dict()
    if json_out:
        console.emit_json(data)
    else:
        import yaml

        console.emit(yaml.safe_dump(data, sort_keys=False).rstrip())



inspect_cmd.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
