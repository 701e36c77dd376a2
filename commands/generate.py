"""`t2l generate`: task description(s) -> PEFT LoRA adapter folder(s)."""

import time
from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import UsageError
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
    at_least,
    checkpoint_spec,
    readable_file,
)
from t2lcli.runtimes import ADAPTER_SCALINGS

EXAMPLES = """[b]Examples[/b]

  t2l generate "Answer grade-school math word problems step by step." -o out/math
  t2l generate --from-file demo/tasks.jsonl -o out/ --json     # one adapter per line ({"name", "description"})
  cat demo/descriptions.txt | t2l generate - -o out/          # '-' = standard input, one per line
  t2l generate "Classify the sentiment of a review." -o out/sent --preview "I loved it!"
  t2l generate --checkpoint llama_8b_t2l/ --embedding-file emb.safetensors -o out/x
"""


def generate(
    description: Annotated[str | None, typer.Argument(help="The task description; '-' reads descriptions from standard input (like --from-file -).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Adapter folder (default out/<slug of the description>/); batch: the parent of one folder per item (default out/).")] = None,
    from_file: Annotated[str | None, typer.Option("--from-file", "-f", help=".txt (one per line) or .jsonl ({description, name}); '-' = stdin.")] = None,
    embedding_file: Annotated[Path | None, typer.Option("--embedding-file", help="Precomputed normalised embeddings [n, dim] (.safetensors/.npy); bypasses the encoder.")] = None,
    checkpoint: CheckpointOpt = None,
    base_model: BaseModelOpt = None,
    dtype: Annotated[Dtype | None, typer.Option("--dtype", help="dtype of the written tensors (default fp32).")] = None,
    scale: Annotated[float, typer.Option("--scale", help="Strength multiplier folded into lora_B (recorded in the card).")] = 1.0,
    scaling: Annotated[str, typer.Option("--scaling", help="rslora (alpha/sqrt(r), as trained; default), lora (alpha/r, the published vLLM eval) or folded (the trained scale folded into lora_B, lora_alpha=r: Ollama, llama.cpp and old vLLM apply it right).")] = "rslora",
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Descriptions per forward pass (default: profile).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Batch: report bad lines and continue instead of stopping.")] = False,
    preview: Annotated[str | None, typer.Option("--preview", help="Load the base model and print base vs adapted output for this input (a batch: the first adapter, named).")] = None,
    preview_all: Annotated[bool, typer.Option("--preview-all", help="With --preview and a batch: preview every adapter, not only the first.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate for --preview.")] = 64,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Generate LoRA adapters from task descriptions (no base-model weights are loaded)."""
    from t2lcli.hw_profiles import load_profile

    if description == "-":  # '-' is standard input, as for --from-file -
        if from_file is not None:
            raise UsageError("give DESCRIPTION '-' (standard input) or --from-file, not both", hint="see t2l generate --help")
        description, from_file = None, "-"
    sources = [x for x in (description is not None, from_file is not None, embedding_file is not None) if x]
    if len(sources) != 1:
        raise UsageError("give exactly one of: a DESCRIPTION, --from-file FILE, or --embedding-file FILE", hint="see t2l generate --help")
    if scale != scale or abs(scale) == float("inf"):
        raise UsageError("--scale must be a finite number")
    if scaling not in ADAPTER_SCALINGS:
        raise UsageError(f"--scaling must be one of {', '.join(ADAPTER_SCALINGS)}, got '{scaling}'")
    at_least("--batch-size", batch_size, 1)
    at_least("--max-new-tokens", max_new_tokens, 1)
    if preview_all and preview is None:
        raise UsageError("--preview-all goes with --preview TEXT", hint='t2l generate --from-file FILE --preview "an input" --preview-all')
    # what the flags name, checked before the engine (torch) is imported: a missing file fails in well under a second
    for what, path in (("batch file", from_file), ("embedding file", embedding_file)):
        if path is not None and str(path) != "-":
            readable_file(what, Path(path))
    checkpoint_spec(checkpoint)
    prof = load_profile(profile, set_)

    from t2lcli.engine.run_generate import GenerateRequest, run_generate

    req = GenerateRequest(
        description=description, output=output, from_file=from_file, embedding_file=embedding_file, checkpoint=checkpoint,
        base_model=base_model, dtype=DTYPE_NAMES[(dtype or Dtype.fp32).value], scale=scale, scaling=scaling,
        batch_size=batch_size or prof.hypernet.batch_size, skip_bad=skip_bad, force=force, trust_remote_code=trust_remote_code,
        keep_results=preview_all,
    )
    t0 = time.perf_counter()
    results = run_generate(req, prof, on_result=(console.emit_json if json_out else _print_result))
    if preview is not None and results:
        from t2lcli.engine.preview import preview_adapter

        batch = description is None
        for r in results if preview_all else results[:1]:
            res = preview_adapter(Path(r["path"]), preview, prof, base_model, max_new_tokens)
            if json_out:
                console.emit_json({"preview": {**res, "adapter": r["path"]}})
            else:
                which = f"adapter: {r['path']}" + ("" if preview_all or not batch else " (the first of the batch; --preview-all previews each)")
                console.emit(f"{which}\ninput:   {preview}\nbase:    {res['base']}\nadapted: {res['adapted']}")
    console.debug(f"total {time.perf_counter() - t0:.3f}s")


def _print_result(result: dict) -> None:
    console.emit(str(result["path"]))


generate.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
