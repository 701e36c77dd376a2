"""The layering rules of docs/architecture.md, checked on the source (imports read with `ast`, nothing imported).

- no import circle between t2lcli's modules, lazy (function-level) imports included: a circle hidden in a function
  body is still a circle (it was how checkpoint <-> official and merge <-> export looked);
- the engine never imports the CLI layer (t2lcli.cli, t2lcli.commands, the console-option helpers);
- the CLI-side modules directly under t2lcli/ do not import the engine at module level (`t2l --help` stays light).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "t2lcli"
CLI_LAYER = ("t2lcli.cli", "t2lcli.commands", "t2lcli.options", "t2lcli.lighthelp")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _imports(path: Path, mods: dict[str, Path], top_level_only: bool = False) -> set[str]:
    """The t2lcli modules `path` imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in mods else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("t2lcli")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_engine():
    mods = _modules()
    graph = {m: _imports(p, mods) for m, p in mods.items() if m.startswith("t2lcli.engine")}
    # a package's __init__ re-exporting its own submodules is not a circle between verbs
    graph = {m: {t for t in deps if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_engine_never_imports_the_cli_layer():
    mods = _modules()
    bad = {
        m: sorted(t for t in _imports(p, mods) if t.startswith(CLI_LAYER))
        for m, p in mods.items()
        if m.startswith("t2lcli.engine")
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_cli_side_modules_import_no_engine_at_module_level():
    mods = _modules()
    top = {m: p for m, p in mods.items() if m.count(".") == 1}  # t2lcli/*.py
    bad = {m: sorted(t for t in _imports(p, mods, top_level_only=True) if t.startswith("t2lcli.engine")) for m, p in top.items()}
    assert {m: v for m, v in bad.items() if v} == {}
