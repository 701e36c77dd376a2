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
    eps: list[Any] | None = _scan_entry_points(ENTRY_POINT_GROUP)
    if eps is None:  # a sys.path entry the direct scan cannot read (a zip, an egg): the full metadata API
        from importlib.metadata import entry_points

        eps = list(entry_points(group=ENTRY_POINT_GROUP))
    return [ep for ep in eps if wanted is None or ep.name in wanted]


class EntryPoint:
    """`name = module:attr` from a distribution's entry_points.txt; `load()` imports it (importlib.metadata's rules)."""

    def __init__(self, name: str, value: str, group: str) -> None:
        self.name, self.value, self.group = name, value, group

    def load(self) -> Any:
        import re

        m = re.match(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$", self.value)
        if not m:
            raise ValueError(f"malformed entry point value {self.value!r}")
        obj = importlib.import_module(m.group("module"))
        for part in (m.group("attr") or "").split(".") if m.group("attr") else []:
            obj = getattr(obj, part)
        return obj

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"


def _scan_entry_points(group: str) -> list[EntryPoint] | None:
    """The entry points of `group`, read straight from the `*.dist-info` / `*.egg-info` folders on sys.path, in the
    order and with the first-distribution-wins rule of `importlib.metadata.entry_points` (importing that module and
    building every distribution costs ~30 ms of `t2l --help`). None when a sys.path entry is not a plain folder."""
    seen: set[str] = set()
    found: list[EntryPoint] = []
    header = f"[{group}]"
    for entry in sys.path:
        folder = entry or "."
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                return None
            continue
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for child in names:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            dist = child.rsplit(".", 1)[0].partition("-")[0]
            key = "_".join(filter(None, dist.replace(".", "-").replace("_", "-").split("-"))).lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                with open(os.path.join(folder, child, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if header in text:
                found.extend(_parse_section(text, group))
    return found


def _parse_section(text: str, group: str) -> list[EntryPoint]:
    out, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            out.append(EntryPoint(name.strip(), value.strip(), group))
    return out


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
