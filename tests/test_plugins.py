"""Third-party commands from the `t2l.commands` entry-point group.

Each test builds a throwaway distribution (a `*.dist-info` folder with `entry_points.txt` plus its module) in a temp
folder on PYTHONPATH and runs the real `python -m t2lcli` in a subprocess, so the in-process app stays untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t2lcli.plugins import BUILTIN_COMMANDS, ENTRY_POINT_GROUP

HELLO = '''
import os, pathlib
pathlib.Path(os.environ["PLUGIN_MARKS"], "hello-imported").touch()


def hello(name: str = "world", shout: bool = False) -> None:
    """Say hello (a test plugin)."""
    import json  # a plugin's heavy imports belong here, in the body
    pathlib.Path(os.environ["PLUGIN_MARKS"], "hello-ran").touch()
    text = f"hello {name}"
    print(text.upper() if shout else text)


def fail() -> None:
    """Fail like a good citizen."""
    from t2lcli.errors import InputError
    raise InputError("the plugin says no", hint="ask nicely")
'''

GROUP = '''
import typer

grp = typer.Typer(help="A plugin command group.")


@grp.command("ping")
def ping() -> None:
    print("pong")


@grp.command("echo")
def echo(word: str) -> None:
    print(word)
'''

BROKEN = '''
raise RuntimeError("boom at import")
'''

SHADOW = '''
def generate() -> None:
    print("I am not the real generate")
'''

NOT_CALLABLE = "value = 42\n"

ENTRY_POINTS = {
    "hello": "t2l_test_hello:hello",
    "fail": "t2l_test_hello:fail",
    "grp": "t2l_test_group:grp",
    "broken": "t2l_test_broken:thing",
    "missing-attr": "t2l_test_hello:no_such_function",
    "notcallable": "t2l_test_notcallable:value",
    "generate": "t2l_test_shadow:generate",
}


@pytest.fixture()
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    for mod, src in [("t2l_test_hello", HELLO), ("t2l_test_group", GROUP), ("t2l_test_broken", BROKEN),
                     ("t2l_test_shadow", SHADOW), ("t2l_test_notcallable", NOT_CALLABLE)]:
        (site / f"{mod}.py").write_text(src)
    dist = site / "t2l_test_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: t2l-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "T2L_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PLUGIN_MARKS"] = str(marks)
    env["COLUMNS"] = "200"
    return env


def _t2l(env: dict[str, str], *args: str, load: str | None = None) -> subprocess.CompletedProcess:
    env = dict(env)
    if load is not None:
        env["T2L_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "t2lcli", *args], capture_output=True, text=True, env=env, timeout=120)


def _listed(help_text: str, name: str) -> bool:
    """Is `name` a row of the commands table in `t2l --help`?"""
    import re

    return re.search(rf"^\W*{re.escape(name)}\s", help_text, flags=re.MULTILINE) is not None


def _marks(env: dict[str, str]) -> set[str]:
    return {p.name for p in Path(env["PLUGIN_MARKS"]).iterdir()}


def test_plugin_command_runs(plugin_env):
    res = _t2l(plugin_env, "hello", "--name", "t2l", "--shout")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "HELLO T2L\n"
    assert _marks(plugin_env) == {"hello-imported", "hello-ran"}
    res = _t2l(plugin_env, "hello", "--help")
    assert res.returncode == 0 and "--shout" in res.stdout and "Say hello" in res.stdout


def test_plugin_group(plugin_env):
    assert _t2l(plugin_env, "grp", "ping").stdout == "pong\n"
    assert _t2l(plugin_env, "grp", "echo", "hi").stdout == "hi\n"


def test_help_survives_broken_plugins_and_warns(plugin_env):
    res = _t2l(plugin_env, "--help")
    assert res.returncode == 0, res.stderr
    for name in ["hello", "grp", "generate", "inspect"]:
        assert _listed(res.stdout, name), name
    for name in ["broken", "notcallable", "missing-attr"]:
        assert not _listed(res.stdout, name), name
    err = res.stderr
    assert "warning: plugin 'broken' (t2l_test_broken:thing) could not be loaded: RuntimeError: boom at import" in err
    assert "warning: plugin 'missing-attr'" in err and "AttributeError" in err
    assert "warning: plugin 'notcallable'" in err and "neither a function nor a typer.Typer" in err
    assert "Traceback" not in err
    # warnings go to stderr only: --help output on stdout is clean
    assert "warning: plugin" not in res.stdout


def test_plugins_load_lazily(plugin_env):
    """Plugin modules are imported when the app is built, never by importing t2lcli or its plugin registry, and a
    command's body (with its heavy imports) runs only when invoked."""
    code = "import sys, t2lcli, t2lcli.plugins, t2lcli.console, t2lcli.errors; print(sorted(m for m in sys.modules if m.startswith('t2l_test')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plugin_env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    assert _marks(plugin_env) == set()
    res = _t2l(plugin_env, "--help")
    assert res.returncode == 0
    assert _marks(plugin_env) == {"hello-imported"}  # imported to list it, not run


def test_load_plugins_env_controls_loading(plugin_env):
    res = _t2l(plugin_env, "--help", load="")
    assert res.returncode == 0 and res.stderr == ""
    assert not _listed(res.stdout, "hello") and not _listed(res.stdout, "grp") and _listed(res.stdout, "generate")
    assert _marks(plugin_env) == set()
    res = _t2l(plugin_env, "hello", load="")
    assert res.returncode == 2 and "No such command 'hello'" in res.stderr

    res = _t2l(plugin_env, "--help", load="grp")
    assert res.returncode == 0 and res.stderr == ""  # the broken ones were not even tried
    assert _listed(res.stdout, "grp") and not _listed(res.stdout, "hello")
    assert _marks(plugin_env) == set()

    res = _t2l(plugin_env, "hello", "--name", "x", load=" hello , grp ")
    assert res.returncode == 0 and res.stdout == "hello x\n" and res.stderr == ""


def test_empty_load_plugins_skips_metadata_scan(plugin_env):
    code = "import sys, t2lcli.cli; print('importlib.metadata' in sys.modules)"
    env = dict(plugin_env, T2L_LOAD_PLUGINS="")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stdout + res.stderr


def test_plugin_cannot_shadow_builtin(plugin_env):
    assert "generate" in BUILTIN_COMMANDS
    res = _t2l(plugin_env, "generate", "--help", load="generate")
    assert res.returncode == 0
    assert "warning: plugin command 'generate' (t2l_test_shadow:generate) ignored: the name is a built-in" in res.stderr
    assert "--from-file" in res.stdout  # the real one


def test_plugin_errors_go_through_the_boundary(plugin_env):
    res = _t2l(plugin_env, "fail", load="fail")
    assert res.returncode == 1
    assert "error: the plugin says no" in res.stderr and "hint: ask nicely" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_tests_run_without_plugins(plugin_env):
    """conftest isolates the suite: with third-party commands installed, a process that has run tests/conftest.py
    sees only the built-ins; the same process without it sees the plugins (so the check can fail)."""
    conftest = Path(__file__).resolve().parent / "conftest.py"
    code = ("import runpy, sys\n"
            "if sys.argv[1] == 'isolated':\n    runpy.run_path(sys.argv[2])\n"
            "sys.argv = ['t2l', '--help']\n"
            "try:\n    runpy.run_module('t2lcli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n")
    out = {}
    for mode in ("isolated", "plain"):
        res = subprocess.run([sys.executable, "-c", code, mode, str(conftest)], capture_output=True, text=True, env=plugin_env,
                             timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        out[mode] = res.stdout
    assert _listed(out["plain"], "hello") and _listed(out["plain"], "grp")
    assert not _listed(out["isolated"], "hello") and not _listed(out["isolated"], "grp") and _listed(out["isolated"], "generate")


def test_direct_scan_finds_what_importlib_metadata_finds(plugin_env, tmp_path):
    """`t2l` reads entry_points.txt itself (importlib.metadata costs ~30 ms of every `t2l --help`): the same entry
    points, in the same order, the first distribution of a name winning, as importlib.metadata.entry_points."""
    site2 = tmp_path / "site2"  # later on the path: the same distribution again (ignored) and another one
    for name, body in [("t2l_test_plugins-0.2.dist-info", "[t2l.commands]\nhello = other:hello\n"),
                       ("Other.Plugin-1.0.dist-info", "# comment\n[console_scripts]\nx = y:z\n\n[t2l.commands]\n  zeta = other.mod:obj.attr [extra]\n")]:
        (site2 / name).mkdir(parents=True)
        (site2 / name / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.split('-')[0]}\nVersion: 1\n")
        (site2 / name / "entry_points.txt").write_text(body)
    env = dict(plugin_env, PYTHONPATH=os.pathsep.join([plugin_env["PYTHONPATH"], str(site2)]))
    code = ("from importlib.metadata import entry_points; from t2lcli.plugins import ENTRY_POINT_GROUP, _scan_entry_points\n"
            "a = [(e.name, e.value) for e in entry_points(group=ENTRY_POINT_GROUP)]\n"
            "b = [(e.name, e.value) for e in _scan_entry_points(ENTRY_POINT_GROUP)]\n"
            "print(a == b, len(a), ('zeta', 'other.mod:obj.attr [extra]') in b, ('hello', 'other:hello') in b)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.split() == ["True", str(len(ENTRY_POINTS) + 1), "True", "False"], res.stdout + res.stderr


def test_entry_point_load_follows_attribute_paths():
    from t2lcli.plugins import EntryPoint

    assert EntryPoint("x", "os.path:join", ENTRY_POINT_GROUP).load() is os.path.join
    assert EntryPoint("x", "os:path.join [extra]", ENTRY_POINT_GROUP).load() is os.path.join
    assert EntryPoint("x", "os.path", ENTRY_POINT_GROUP).load() is os.path
    with pytest.raises(ValueError, match="malformed"):
        EntryPoint("x", "not a value!", ENTRY_POINT_GROUP).load()


PLUGIN_PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "t2l-hello-plugin"
version = "0.1"

[project.entry-points."t2l.commands"]
hello-pip = "t2l_hello_pip:hello"
'''

PLUGIN_MODULE = '''
def hello(name: str = "world") -> None:
    """Say hello from a pip-installed plugin."""
    print(f"hello from pip, {name}")
'''


def test_pip_installed_plugin_appears_in_the_real_t2l_script(tmp_path):
    """The way a user gets a plugin: `pip install` a distribution declaring a `t2l.commands` entry point, then run the
    installed `t2l` console script (the help cache included): the command is listed, runs, and goes when uninstalled."""
    t2l = Path(sys.executable).parent / "t2l"
    if not t2l.is_file():
        pytest.skip("no t2l console script next to this interpreter (not an installed environment)")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (project / "t2l_hello_pip.py").write_text(PLUGIN_MODULE)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(project)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    dist = next(site.glob("t2l_hello_plugin-0.1.dist-info"))
    assert "[t2l.commands]" in (dist / "entry_points.txt").read_text()  # pip wrote the entry point, not this test
    env = {k: v for k, v in os.environ.items() if k not in ("T2L_LOAD_PLUGINS", "T2L_HELP_CACHE")}
    env.update(PYTHONPATH=str(site), T2L_HOME=str(tmp_path / "home"), COLUMNS="200")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(t2l), *args], capture_output=True, text=True, env=env, timeout=120)

    listed = run("--help")
    assert listed.returncode == 0 and _listed(listed.stdout, "hello-pip"), listed.stdout[-3000:] + listed.stderr[-2000:]
    assert _listed(run("--help").stdout, "hello-pip")  # served again (from the help cache this time)
    ran = run("hello-pip", "--name", "t2l")
    assert ran.returncode == 0 and ran.stdout == "hello from pip, t2l\n", ran.stdout + ran.stderr
    for p in site.iterdir():  # uninstalled: the next --help (cache keyed on entry_points.txt) no longer lists it
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    gone = run("--help")
    assert gone.returncode == 0 and not _listed(gone.stdout, "hello-pip") and _listed(gone.stdout, "generate")
    assert run("hello-pip").returncode == 2
