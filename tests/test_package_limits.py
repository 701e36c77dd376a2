"""Issue #19's size limits, checked on the source of the engine packages that have been split (read with `ast`).

- no module over ~400 lines;
- no function over ~80 lines unless its docstring gives the reason (a line containing "long because").

Add a package to PACKAGES once it has been split; each verb's entry point is `run_<verb>` in its `run.py`.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"eval": "run_eval", "bench": "run_bench", "train": "run_train", "merge": "run_merge", "inspect": "run_inspect"}
TREE_MODULE_LINES = 440  # every other module of t2lcli/ and commands/: "about 400"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _files(pkg: str) -> list[Path]:
    files = sorted((ROOT / "t2lcli" / "engine" / pkg).glob("*.py"))
    assert files, f"t2lcli/engine/{pkg}/ holds no modules"
    return files


def _long_functions(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
            and "long because" not in (ast.get_docstring(n) or "").lower()]


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_module_over_the_line_limit(pkg):
    over = {p.name: n for p in _files(pkg) if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines in engine/{pkg}: {over}"


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_long_function_without_a_reason(pkg):
    over = [f for p in _files(pkg) for f in _long_functions(p)]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines with no reason in their docstring: {over}"


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_entry_point_is_run_verb_in_run_py(pkg):
    tree = ast.parse((ROOT / "t2lcli" / "engine" / pkg / "run.py").read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert PACKAGES[pkg] in names


def test_the_whole_tree_keeps_the_limits():
    """Every module of the package and the commands (not only the split verbs): about 400 lines at most, no function
    over 80 lines without its reason."""
    files = sorted([*(ROOT / "t2lcli").rglob("*.py"), *(ROOT / "commands").rglob("*.py")])
    assert len(files) > 100
    long_modules = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > TREE_MODULE_LINES}
    assert not long_modules, f"modules over {TREE_MODULE_LINES} lines: {long_modules}"
    assert not [f for p in files for f in _long_functions(p)]


def test_the_checks_see_a_long_function(tmp_path, monkeypatch):
    """The function check is not vacuous: a made-up 90-line function in a made-up package is reported."""
    pkg = tmp_path / "t2lcli" / "engine" / "fake"
    pkg.mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (pkg / "run.py").write_text(f'def run_fake():\n    """No reason given."""\n{body}\n', encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="run_fake"):
        test_no_long_function_without_a_reason("fake")
    (pkg / "run.py").write_text(f'def run_fake():\n    """Long because: a table of ninety steps."""\n{body}\n', encoding="utf-8")
    test_no_long_function_without_a_reason("fake")
