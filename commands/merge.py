"""`t2l merge`: fold an adapter into its base, combine adapters or descriptions, export for serving runtimes."""

import math
from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import AdapterFormatError, InputError, show_value
from t2lcli.options import (
    DTYPE_NAMES,
    BaseModelOpt,
    CheckpointOpt,
    Dtype,
    ForceOpt,
    JsonOpt,
    ProfileOpt,
    SetOpt,
    TrustRemoteCodeOpt,
    checkpoint_spec,
    flag_values,
)
from t2lcli.runtimes import EXPORT_RUNTIMES, MERGE_METHODS

EXAMPLES = """[b]Examples[/b]

  t2l merge out/math --into-base -o merged/math                       # full transformers model, ΔW folded in
  t2l merge out/math out/code --weights 0.6,0.4 -o out/mathcode        # exact weighted sum (method linear)
  t2l merge a/ b/ c/ --weights 0.5,0.3,0.2 --method svd --rank 8 -o out/abc
  t2l merge a/ b/ --method ties --density 0.2 -o out/ab
  t2l merge -c default --description "Solve math word problems." --description "Answer in French." --weights 0.7,0.3 -o out/mix
  t2l merge out/math --export vllm -o serve/math --max-lora-rank 16    # prints the `vllm serve` command
  t2l merge out/math --export llamacpp -o gguf/math                   # adapter.gguf + the `llama-cli --lora` command
  t2l merge out/math --export ollama --runtime-base smollm2:135m -o ollama/math   # adapter.gguf + Modelfile
"""


def merge(
    adapters: Annotated[list[str] | None, typer.Argument(help="Adapter folder(s). One with --into-base/--export; several to combine.", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder (required).")] = None,
    into_base: Annotated[bool, typer.Option("--into-base", help="Write a full model folder with the adapter folded into the base weights.")] = False,
    export: Annotated[str | None, typer.Option("--export", help="Export for a runtime: vllm, sglang, llamacpp or ollama.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="Combination: linear (exact, default), cat, svd, ties or dare.")] = None,
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Comma-separated weights, one per adapter/description (default: equal).")] = None,
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Target rank for svd/ties/dare (default: the largest source rank).")] = None,
    density: Annotated[float | None, typer.Option("--density", help="ties: fraction of entries kept (default 0.2); dare: keep probability (default 0.5).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for dare.")] = 0,
    descriptions: Annotated[list[str] | None, typer.Option("--description", "-d", help="A task description to mix (repeatable); uses --checkpoint.")] = None,
    checkpoint: CheckpointOpt = None,
    base_model: BaseModelOpt = None,
    dtype: Annotated[Dtype | None, typer.Option("--dtype", help="--into-base: dtype of the merged weights (default: the profile's base dtype).")] = None,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="--into-base: largest safetensors shard, e.g. 2GB or 500MB.")] = "2GB",
    max_lora_rank: Annotated[int | None, typer.Option("--max-lora-rank", help="vllm/sglang: the server's max LoRA rank; a larger adapter is refused.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Adapter name in the printed serving command (default: the output folder's name).")] = None,
    runtime_base: Annotated[str | None, typer.Option("--runtime-base", help="The base as the runtime names it: hub id (vllm/sglang), .gguf path or Ollama model (llamacpp/ollama).")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Merge an adapter into its base, combine adapters or descriptions, or export for vLLM/SGLang/llama.cpp/Ollama."""
    from t2lcli.hw_profiles import load_profile

    with flag_values():
        _check_flags(adapters or [], output, into_base, export, method, weights, rank, density, descriptions or [], dtype, max_lora_rank, runtime_base)
    from t2lcli.engine.atomic import check_readable  # stdlib only

    for a in adapters or []:  # what the arguments name, before the engine (torch) is imported
        check_readable(Path(a), "adapter folder")
        if not Path(a).is_dir():
            raise AdapterFormatError(f"adapter folder not found: {a}", hint="pass a folder written by `t2l generate`")
    checkpoint_spec(checkpoint)
    prof = load_profile(profile, set_)

    from t2lcli.engine.merge import MergeRequest, run_merge

    req = MergeRequest(
        adapters=list(adapters or []), output=output, into_base=into_base, export=export, method=method, weights=weights,
        rank=rank, density=density, seed=seed, checkpoint=checkpoint, descriptions=list(descriptions or []),
        base_model=base_model, dtype=DTYPE_NAMES[dtype.value] if dtype else None, max_shard_size=max_shard_size,
        max_lora_rank=max_lora_rank, name=name, runtime_base=runtime_base, force=force, trust_remote_code=trust_remote_code,
    )
    res = run_merge(req, prof)
    if json_out:
        console.emit_json(res)
        return
    console.emit(str(res["path"]))
    if res.get("command"):
        console.emit(res["command"])


METHODS, EXPORTS = MERGE_METHODS, EXPORT_RUNTIMES  # one home: t2lcli/runtimes.py (stdlib only)


def _check_flags(adapters: list[str], output: Path | None, into_base: bool, export: str | None, method: str | None, weights: str | None, rank: int | None,
                 density: float | None, descriptions: list[str], dtype: Dtype | None, max_lora_rank: int | None,
                 runtime_base: str | None) -> None:
    """The flag rules `run_merge` applies too, here before anything heavy is imported (usage errors, exit 2)."""
    if output is None:
        raise InputError("give an output folder with -o/--output")
    if into_base and export:
        raise InputError("choose one of --into-base and --export")
    if export is not None and export not in EXPORTS:
        raise InputError(f"unknown export target '{export}'", hint=f"use one of: {', '.join(EXPORTS)}")
    if method is not None and method not in METHODS:
        raise InputError(f"unknown method '{method}'", hint=f"use one of: {', '.join(METHODS)}")
    if rank is not None and rank < 1:
        raise InputError("--rank must be at least 1")
    if density is not None and not (0.0 < density <= 1.0):
        raise InputError(f"--density must be in (0, 1], got {density}")
    if density is not None and (method or "linear") not in ("ties", "dare"):
        raise InputError("--density applies only to --method ties or dare")
    if dtype is not None and not into_base:
        raise InputError("--dtype applies only to --into-base (adapters are written in float32)")
    if (max_lora_rank is not None or runtime_base is not None) and export is None:
        raise InputError("--max-lora-rank and --runtime-base apply only to --export")
    if descriptions and adapters:
        raise InputError("give adapter folders or --description texts, not both")
    if not descriptions and not adapters:
        raise InputError("nothing to merge: give ADAPTER folder(s), or --checkpoint with --description texts", hint="see t2l merge --help")
    if descriptions and method is not None:
        raise InputError("--method applies to adapters; descriptions are mixed in the hypernetwork's task space", hint="drop --method")
    if len(adapters) == 1 and method is None and not (into_base or export):
        raise InputError("nothing to do with one adapter", hint="add --into-base, --export TARGET, more adapters, or --method svd --rank R")
    if rank is not None and adapters and (method is not None or len(adapters) > 1) and (method or "linear") in ("cat", "linear"):
        if method == "cat":
            raise InputError("--rank does not apply to --method cat (its rank is the sum of the sources' ranks)", hint="use --method svd --rank R")
        raise InputError("--rank does not apply to --method linear (it is lossless)", hint="use --method svd --rank R to truncate")
    if weights is not None and weights.strip():
        n, what = (len(descriptions), "descriptions") if descriptions else (len(adapters), "adapters")
        vals = []
        for p in (p.strip() for p in weights.split(",")):
            try:
                vals.append(float(p))
            except ValueError:
                raise InputError(f"--weights: {show_value(p)} is not a number", hint="give comma-separated numbers, e.g. --weights 0.7,0.3") from None
            if not math.isfinite(vals[-1]):
                raise InputError(f"--weights: {show_value(p)} is not a finite number")
        if len(vals) != n:
            raise InputError(f"--weights has {len(vals)} value(s) but there are {n} {what}", hint=f"give exactly {n} comma-separated weights")
        if descriptions and (any(w < 0 for w in vals) or sum(vals) <= 0):
            raise InputError("description weights must be >= 0 with a positive total (they are normalised to sum to 1)")
        if all(w == 0 for w in vals):
            raise InputError("all weights are zero: the result would be an empty adapter", hint="give at least one non-zero weight")
        if method == "ties" and any(w < 0 for w in vals):
            raise InputError("ties uses weights as relative importances: they must be >= 0", hint="use --method linear or dare for negative weights")


merge.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
