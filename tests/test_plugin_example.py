"""The docs' "Writing a plugin" example (docs/plugins.md) (tests/plugin_example) works as a real `t2l.commands` entry point.

No pip install (too slow for a test): the package's own pyproject.toml entry points are written into a
`*.dist-info/entry_points.txt` in a temp folder on PYTHONPATH, which is exactly what installing it would register.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _install(site: Path, name: str, entry_points: dict[str, str], version: str = "0.1.0") -> None:
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[t2l.commands]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "T2L_LOAD_PLUGINS"}  # unset = load every plugin
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "120"
    return subprocess.run([sys.executable, "-m", "t2lcli", *args], capture_output=True, text=True, env=env)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["t2l.commands"]
    assert eps == {"hello": "t2l_hello:hello"}
    _install(tmp_path / "site", meta["project"]["name"], eps)
    return tmp_path / "site"


def test_plugin_command_runs(site: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "adapter_model.safetensors").write_bytes(b"")
    res = _run(site, "hello", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"folder": str(tmp_path / "out"), "adapters": ["a", "b"]}
    bad = _run(site, "hello", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_plugin_appears_in_help_with_its_examples(site: Path) -> None:
    top = _run(site, "--help")
    assert top.returncode == 0 and "hello" in top.stdout and "Count the PEFT adapters" in top.stdout
    sub = _run(site, "hello", "--help")
    assert sub.returncode == 0 and "t2l hello out/ --json" in sub.stdout


def test_broken_plugin_warns_and_help_still_works(site: Path) -> None:
    (site / "t2l_broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    _install(site, "t2l-broken", {"broken": "t2l_broken_plugin:command"})
    res = _run(site, "--help")
    assert res.returncode == 0
    assert "warning: plugin 'broken'" in res.stderr and "missing dependency foo" in res.stderr
    assert "hello" in res.stdout and "generate" in res.stdout


def test_docs_show_the_tested_example() -> None:
    section = PAGE.read_text(encoding="utf-8")
    assert section.startswith("# Writing a plugin")
    code = (EXAMPLE / "t2l_hello.py").read_text()
    assert code.strip() in section, "docs/plugins.md's example differs from tests/plugin_example/t2l_hello.py"
    assert '[project.entry-points."t2l.commands"]\nhello = "t2l_hello:hello"' in section
