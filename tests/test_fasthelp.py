"""`t2l --help` from the help cache (t2lcli.fasthelp): byte for byte what Typer prints, re-rendered when a command or
a plugin changes, and never an error when T2L_HOME cannot be written. Each run is the real `python -m t2lcli`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from t2lcli import fasthelp

PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['t2l', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('t2lcli', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\n"
    "sys.stderr.write('RENDERED:' + ','.join(m for m in ('typer', 'click', 'rich') if m in sys.modules) + f'|EXIT:{code}')\n"
)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("T2L_HELP_CACHE", "T2L_LOAD_PLUGINS", "COLUMNS")}
    return {**env, "T2L_HOME": str(home), **extra}


def _help(args: list[str], env: dict[str, str]) -> tuple[str, bool]:
    """(stdout, rendered by typer?) of `python -m t2lcli ARGS`."""
    res = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=120)
    tail = res.stderr.rsplit("RENDERED:", 1)[1]
    assert tail.endswith("|EXIT:0") or tail.endswith("|EXIT:None"), res.stderr
    return res.stdout, tail.split("|")[0] != ""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["train", "-h"], ["bench", "--help"]])
def test_cached_help_is_exactly_what_typer_prints(tmp_path, args):
    env = _env(tmp_path / "home")
    typer_text, rendered = _help(args, {**env, "T2L_HELP_CACHE": "0"})
    assert rendered and "Usage" in typer_text
    first, rendered = _help(args, env)  # a miss: rendered and kept
    assert rendered and first == typer_text
    again, rendered = _help(args, env)  # a hit: no typer, click or rich
    assert not rendered and again == typer_text
    assert len(list((tmp_path / "home" / "help").glob("*.json"))) == 1


def test_width_and_colour_settings_are_part_of_the_key(tmp_path):
    env = _env(tmp_path / "home")
    texts = {}
    for setting in ({"COLUMNS": "60"}, {"COLUMNS": "140"}, {"COLUMNS": "60", "FORCE_COLOR": "1"}):
        want, _ = _help(["--help"], {**env, **setting, "T2L_HELP_CACHE": "0"})
        _help(["--help"], {**env, **setting})
        got, rendered = _help(["--help"], {**env, **setting})
        assert not rendered and got == want
        texts[json.dumps(setting)] = got
    assert len(set(texts.values())) == 3  # three different screens, each served for its own setting
    assert "\x1b[" in texts[json.dumps({"COLUMNS": "60", "FORCE_COLOR": "1"})]


def test_entries_record_the_command_modules(tmp_path):
    env = _env(tmp_path / "home")
    _help(["generate", "--help"], env)
    (entry,) = (tmp_path / "home" / "help").glob("*.json")
    files = {Path(f[0]).resolve() for f in json.loads(entry.read_text())["files"]}
    root = Path(fasthelp.__file__).resolve().parents[1]
    for must in (root / "commands" / "generate.py", root / "t2lcli" / "cli.py", root / "t2lcli" / "options.py"):
        assert must in files, f"{must} is not checked on a cache hit"


PLUGIN = '''
def hello(name: str = "world") -> None:
    """{doc}"""
    print("hello", name)
'''


def test_a_plugin_added_or_changed_re_renders(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    env = _env(tmp_path / "home", PYTHONPATH=str(site))
    before, _ = _help(["--help"], env)
    _help(["--help"], env)
    assert "hello" not in before
    (site / "t2l_cache_probe.py").write_text(PLUGIN.format(doc="Say hello, first edition."))
    dist = site / "t2l_cache_probe-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: t2l-cache-probe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[t2l.commands]\nhello = t2l_cache_probe:hello\n")
    added, rendered = _help(["--help"], env)  # a new distribution with t2l.commands: not the cached screen
    assert rendered and "hello" in added and "first edition" in added
    assert _help(["--help"], env) == (added, False)
    (site / "t2l_cache_probe.py").write_text(PLUGIN.format(doc="Say hello, second and longer edition."))
    changed, rendered = _help(["--help"], env)  # the plugin's module changed: re-rendered
    assert rendered and "second and longer edition" in changed
    sub, _ = _help(["hello", "--help"], env)
    assert "second and longer edition" in sub
    (dist / "entry_points.txt").unlink()  # uninstalled
    (dist / "METADATA").unlink()
    dist.rmdir()
    gone, rendered = _help(["--help"], env)
    assert rendered and gone == before


@pytest.mark.parametrize("home", ["file", "damaged"])
def test_unwritable_or_damaged_cache_still_helps(tmp_path, home):
    want, _ = _help(["--help"], _env(tmp_path / "ref", T2L_HELP_CACHE="0"))
    if home == "file":  # T2L_HOME under a regular file: nothing can be written there, even as root
        (tmp_path / "plain").write_text("x")
        env = _env(tmp_path / "plain" / "home")
    else:
        env = _env(tmp_path / "home")
        _help(["--help"], env)
        (entry,) = (tmp_path / "home" / "help").glob("*.json")
        entry.write_text('{"format": 1, "files": [[1, 2]], "out": 3')  # truncated, wrong types
    for _ in range(2):
        got, rendered = _help(["--help"], env)
        assert got == want and (rendered or home == "damaged")


def test_only_help_requests_are_cached():
    assert fasthelp.help_request(["--help"]) and fasthelp.help_request(["-h"]) and fasthelp.help_request(["merge", "--help"])
    for argv in ([], ["generate"], ["generate", "x", "--help"], ["-v", "--help"], ["--help", "generate"], ["../x", "--help"]):
        assert not fasthelp.help_request(argv), argv
