"""The layering rules of docs/architecture.md, checked on the source (imports read with `ast`, nothing imported).

- no import circle between t2lcli's modules (the whole package: commands, engine and infrastructure), lazy
  (function-level) imports included: a circle hidden in a function body is still a circle (it was how
  checkpoint <-> official and merge <-> export looked);
- no import from one verb's engine package into another's (VERBS below): what two verbs share lives in an
  infrastructure module beside them (adapters, atomic, checkpoint, generate's Generator, runtimes, ...);
- a command module (commands/<verb>.py) imports no other verb's engine package;
- the engine never imports the CLI layer (t2lcli.cli, t2lcli.commands, the console-option helpers);
- the modules directly under t2lcli/ (t2lcli/*.py) do not import the engine at module level (`t2l --help` stays
  light).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "t2lcli"
CLI_LAYER = ("t2lcli.cli", "t2lcli.commands", "t2lcli.options", "t2lcli.lighthelp")
# each verb's engine code: a package (or, until it grows into one, its module(s)); a shim at an old path counts as
# its verb's. engine/generate.py (Generator) is not here: it is the shared generator that serve, merge, eval and
# bench build on; the generate verb's own code is run_generate.
VERBS = {
    "generate": ("t2lcli.engine.run_generate",),
    "merge": ("t2lcli.engine.merge",),
    "inspect": ("t2lcli.engine.inspect",),
    "eval": ("t2lcli.engine.eval", "t2lcli.engine.evaluate", "t2lcli.engine.eval_tasks"),
    "bench": ("t2lcli.engine.bench",),
    "train": ("t2lcli.engine.train",),
    "serve": ("t2lcli.engine.serve",),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    # t2lcli.commands is the top-level commands/ folder (pyproject's package-dir maps it)
    for p in (ROOT / "commands").rglob("*.py"):
        parts = ("t2lcli",) + p.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
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


def _verb(module: str) -> str | None:
    for verb, prefixes in VERBS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return verb
    return None


def _cross_verb(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """module -> the modules of another verb it imports (only modules that belong to a verb)."""
    bad = {m: sorted(t for t in deps if _verb(t) not in (None, _verb(m))) for m, deps in graph.items() if _verb(m)}
    return {m: v for m, v in bad.items() if v}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: _imports(p, mods) for m, p in mods.items()}
    # a package's __init__ re-exporting its own submodules (or a submodule importing its package) is not a circle
    return {m: {t for t in deps if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, deps in graph.items()}


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_finds_a_cross_verb_import():
    graph = {"t2lcli.engine.merge.run": {"t2lcli.engine.inspect.compat", "t2lcli.engine.adapters", "t2lcli.engine.merge.algebra"},
             "t2lcli.engine.eval_tasks": {"t2lcli.engine.eval.run"}, "t2lcli.engine.adapters": {"t2lcli.engine.bench"}}
    assert _cross_verb(graph) == {"t2lcli.engine.merge.run": ["t2lcli.engine.inspect.compat"]}


def test_the_checker_sees_every_module():
    mods = _modules()
    for name in ("t2lcli.cli", "t2lcli.commands.generate", "t2lcli.engine.run_generate", "t2lcli.engine.merge.run", "t2lcli.engine.inspect"):
        assert name in mods, name
    assert {v for v in map(_verb, mods) if v} >= {"generate", "merge", "inspect", "eval", "bench", "train", "serve"}
    assert any(_verb(t) == "merge" for t in _imports(mods["t2lcli.commands.merge"], mods))  # lazy imports are read


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_no_verb_imports_another_verbs_engine_package():
    assert _cross_verb(_graph()) == {}


def test_a_command_imports_no_other_verbs_engine_package():
    mods = _modules()
    bad = {}
    for m, p in mods.items():
        if m.startswith("t2lcli.commands.") and m.count(".") == 2 and m.rsplit(".", 1)[1] in VERBS:
            own = m.rsplit(".", 1)[1]
            other = sorted(t for t in _imports(p, mods) if _verb(t) not in (None, own))
            if other:
                bad[m] = other
    assert bad == {}


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
    top = {m: p for m, p in mods.items() if p.parent == PKG}  # t2lcli/*.py, t2lcli/__init__.py included
    bad = {m: sorted(t for t in _imports(p, mods, top_level_only=True) if t.startswith("t2lcli.engine")) for m, p in top.items()}
    assert {m: v for m, v in bad.items() if v} == {}
