"""Where commands come from: a fixed map of built-ins plus third-party entry points (group `t2l.commands`).

A plugin's entry point names a command function (attached with `app.command(name)`) or a `typer.Typer` (attached as
a group). A plugin that fails to load prints a warning on stderr and never breaks `t2l --help`.
`T2L_LOAD_PLUGINS`: unset = load all; empty = none; `a,b` = only those names.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

ENTRY_POINT_GROUP = "t2l.commands"

# name -> "module:function"; one visible place (architecture.md 7.2)
BUILTIN_COMMANDS: dict[str, str] = {
    "generate": "t2lcli.commands.generate:generate",
    "inspect": "t2lcli.commands.inspect:inspect_cmd",
    "eval": "t2lcli.commands.eval:eval_cmd",
    "bench": "t2lcli.commands.bench:bench",
    "merge": "t2lcli.commands.merge:merge",
    "convert": "t2lcli.commands.convert:convert",
    "train": "t2lcli.commands.train:train",
    "serve": "t2lcli.commands.serve:serve",
}


def load_object(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _wanted() -> set[str] | None:
    raw = os.environ.get("T2L_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def plugin_entry_points() -> list[Any]:
    wanted = _wanted()
    if wanted is not None and not wanted:
        return []
    from importlib.metadata import entry_points

    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    return [ep for ep in eps if wanted is None or ep.name in wanted]


def register_all(app: Any) -> None:
    """Attach built-ins, then plugins (a plugin cannot shadow a built-in)."""
    import typer

    for name, target in BUILTIN_COMMANDS.items():
        _attach(app, name, load_object(target), typer)
    for ep in plugin_entry_points():
        if ep.name in BUILTIN_COMMANDS:
            sys.stderr.write(f"warning: plugin command '{ep.name}' ({ep.value}) ignored: the name is a built-in\n")
            continue
        try:
            obj = ep.load()
            _attach(app, ep.name, obj, typer)
        except Exception as exc:  # a broken plugin must never break the CLI
            sys.stderr.write(f"warning: plugin '{ep.name}' ({ep.value}) could not be loaded: {type(exc).__name__}: {exc}\n")


def _attach(app: Any, name: str, obj: Any, typer: Any) -> None:
    if isinstance(obj, typer.Typer):
        app.add_typer(obj, name=name)
    elif callable(obj):
        epilog = getattr(obj, "__t2l_examples__", None)
        app.command(name, epilog=epilog)(obj)
    else:
        raise TypeError(f"{obj!r} is neither a function nor a typer.Typer")
