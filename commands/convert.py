"""`t2l convert`: an official SakanaAI checkpoint (or any checkpoint t2l loads) -> the native t2l format."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.options import ForceOpt, JsonOpt, checkpoint_spec

EXAMPLES = """[b]Examples[/b]

  t2l convert default -o ckpt/default-fp32 --json                  # the shipped checkpoint, re-stored in fp32
  t2l convert trained_t2l/llama_8b_t2l -o ckpt/llama_8b_t2l
  t2l convert trained_t2l/gemma_2b_t2l -o ckpt/gemma_2b_t2l_bf16 --dtype bf16 --json
  t2l convert SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l -o ckpt/llama_8b_t2l   # online: fetches only that folder
  t2l generate --checkpoint ckpt/llama_8b_t2l --embedding-file emb.safetensors -o out/x
"""


class ConvertDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    float32 = "float32"
    bfloat16 = "bfloat16"


def convert(
    source: Annotated[str, typer.Argument(help="Official folder (hypermod.pt + args.yaml + adapter_config.json), native folder, or owner/repo/folder on the hub.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Native checkpoint folder to write (t2l_config.json + hypernet.safetensors).")],
    dtype: Annotated[ConvertDtype, typer.Option("--dtype", help="Stored weight dtype (fp32 keeps generation byte-identical).")] = ConvertDtype.fp32,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a T2L checkpoint to the native format: no pickle, zero buffers dropped, provenance recorded."""
    checkpoint_spec(source)  # a typo fails before torch is imported
    from t2lcli.engine.convert import convert_checkpoint

    summary = convert_checkpoint(source, output, dtype=dtype.value, force=force)
    if json_out:
        console.emit_json(summary)
        return
    dropped = ", ".join(f"{k} ({v})" for k, v in summary["dropped_buffers"].items()) or "none"
    console.log(
        f"{summary['source_format']} {summary['variant']} checkpoint, {summary['parameters'] / 1e6:.2f}M parameters, "
        f"{summary['dtype']}; dropped: {dropped}"
    )
    console.emit(summary["path"])


convert.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
