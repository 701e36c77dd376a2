"""`t2l merge`: fold an adapter into its base, combine adapters or descriptions, export for serving runtimes."""

from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.options import DTYPE_NAMES, BaseModelOpt, CheckpointOpt, Dtype, ForceOpt, JsonOpt, ProfileOpt, SetOpt, TrustRemoteCodeOpt

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
    from t2lcli.hardware import load_profile

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


merge.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
