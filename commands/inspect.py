"""`t2l inspect`: what is this profile / adapter / checkpoint?"""

from __future__ import annotations

from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import InputError
from t2lcli.options import JsonOpt, SetOpt

EXAMPLES = """[b]Examples[/b]

  t2l inspect profile gpu-16gb --json
  t2l inspect out/math                       # a PEFT adapter
  t2l inspect path/to/checkpoint --json      # a native or official T2L checkpoint
"""


def inspect_cmd(
    target: Annotated[list[str], typer.Argument(help="'profile NAME', an adapter folder, or a checkpoint folder.")],
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what a profile, adapter or checkpoint is."""
    if target[0] == "profile":
        if len(target) > 2:
            raise InputError("usage: t2l inspect profile NAME")
        from t2lcli.hardware import load_profile

        prof = load_profile(target[1] if len(target) > 1 else None, set_)
        data = prof.to_dict()
        if json_out:
            console.emit_json(data)
        else:
            import yaml

            console.emit(yaml.safe_dump(data, sort_keys=False).rstrip())
        return
    from t2lcli.engine.inspect import inspect_paths

    report = inspect_paths(target)
    if json_out:
        console.emit_json(report)
    else:
        import yaml

        console.emit(yaml.safe_dump(report, sort_keys=False, allow_unicode=True).rstrip())


inspect_cmd.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
