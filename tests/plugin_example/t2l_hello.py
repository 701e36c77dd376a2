"""A t2l plugin: `t2l hello` counts the adapters under a folder (the README's "Writing a plugin" example)."""

from pathlib import Path
from typing import Annotated

import typer


def hello(
    folder: Annotated[Path, typer.Argument(help="A folder of adapters.")] = Path("."),
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count the PEFT adapters under FOLDER."""
    from t2lcli import console  # import inside the body: `t2l --help` must stay fast
    from t2lcli.errors import InputError

    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}", hint="pass a folder written by t2l generate")
    found = sorted(p.parent.name for p in folder.rglob("adapter_model.safetensors"))
    if json_out:
        console.emit_json({"folder": str(folder), "adapters": found})
    else:
        console.emit(f"{len(found)} adapter(s) in {folder}: {', '.join(found)}")


hello.__t2l_examples__ = """[b]Examples[/b]

  t2l hello out/
  t2l hello out/ --json
"""
