"""The built-in commands (installed as `t2lcli.commands`).

No `from __future__ import annotations` in these modules: Typer reads every parameter's annotation to build even
`t2l --help`, and string annotations are compiled and evaluated twice each (about a quarter of the help's time).
"""
