"""Generated artefacts stay in sync with the live app: completions/*, the command reference page (docs/reference.md), the docs home page, help examples."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t2lcli import devtools

FIX = "run `make docs completions` and commit the result"


def test_completion_scripts_match_the_app() -> None:
    for name, text in devtools.completion_scripts().items():
        path = devtools.COMPLETIONS_DIR / name
        assert path.is_file(), f"{path} is missing: {FIX}"
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted from the app: {FIX}"


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    return devtools.help_texts()


def test_command_reference_page_matches_the_app(help_texts: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devtools, "help_texts", lambda: help_texts)
    page = devtools.REFERENCE.read_text(encoding="utf-8")
    assert devtools.BEGIN in page and devtools.END in page, f"docs/reference.md has no command reference: {FIX}"
    assert devtools.readme_with_reference(page, devtools.command_reference()) == page, f"docs/reference.md drifted: {FIX}"


def test_readme_is_a_landing_page() -> None:
    """README.md stays short (what it is, install, the two commands, quick start, a headline result, links); the
    rest lives in docs/ pages, and every docs/ link in it names a page that exists."""
    import re

    readme = devtools.README.read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes: move detail into docs/"
    pages = re.findall(r"\]\(docs/([^)#]+)\)", readme)
    assert pages and all((devtools.ROOT / "docs" / p).is_file() for p in pages), pages


def test_docs_home_page_is_the_readme() -> None:
    index = devtools.INDEX.read_text(encoding="utf-8")
    assert index == devtools.index_page(devtools.README.read_text(encoding="utf-8")), f"docs/index.md drifted: {FIX}"
    assert "](docs/" not in index and "](reference.md)" in index


def test_reference_does_not_depend_on_the_terminal(help_texts: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("TERMINAL_WIDTH", "300")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert devtools.help_texts() == help_texts
    assert all("\x1b[" not in text for text in help_texts.values())


def test_every_command_shows_runnable_examples(help_texts: dict[str, str]) -> None:
    """Each --help has an Examples block whose lines name a real command and only its real options."""
    import typer.main

    from t2lcli.cli import app

    group = typer.main.get_command(app)
    for name, text in help_texts.items():
        assert "Examples" in text, f"`t2l {name} --help` shows no examples"
        examples = [line.strip() for line in text.split("Examples", 1)[1].splitlines() if line.strip().startswith("t2l ")]
        assert examples, f"`t2l {name} --help`: no example lines"
        for line in examples:
            words = shlex.split(line.split("  #")[0])
            if words[1] == "COMMAND":
                continue
            cmd = group.commands.get(words[1])
            assert cmd is not None, f"example uses an unknown command: {line}"
            known = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts} | {"--help", "-h"}
            for w in words[2:]:
                if w.startswith("-") and not re.fullmatch(r"-\d.*", w):
                    assert w.split("=")[0] in known, f"example `{line}` uses {w}, which `t2l {words[1]}` does not have"


def _bash_complete(words: list[str]) -> list[str]:
    script = (
        f"source {shlex.quote(str(devtools.COMPLETIONS_DIR / 't2l.bash'))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; _t2l\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completion_completes_commands_options_and_choices() -> None:
    assert _bash_complete(["t2l", "ins"]) == ["inspect"]
    assert "--shapes" in _bash_complete(["t2l", "bench", "--sh"])
    assert _bash_complete(["t2l", "bench", "--shapes", ""]) == ["gemma-2-2b", "llama-3.1-8b", "mistral-7b", "smollm2-135m"]
    assert _bash_complete(["t2l", "inspect", "out/x", "--compat", "ll"]) == ["llamacpp"]
    assert set(_bash_complete(["t2l", ""])) >= {"generate", "inspect", "bench", "--version"}


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_parse_their_scripts(shell: str) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} is not installed here; the drift test above still covers the script")
    script = devtools.COMPLETIONS_DIR / ("t2l.zsh" if shell == "zsh" else "t2l.fish")
    res = subprocess.run([exe, "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    if shell == "fish":
        out = subprocess.run([exe, "-c", f"source {script}; complete -C 't2l bench --shapes '"], capture_output=True, text=True)
        assert "llama-3.1-8b" in out.stdout
        # an option several commands share is written once, for all of them
        for words, want in (("t2l merge --pro", "--profile"), ("t2l eval --js", "--json"), ("t2l serve --qu", "--queue-size")):
            out = subprocess.run([exe, "-c", f"source {script}; complete -C '{words}'"], capture_output=True, text=True)
            assert want in out.stdout.split(), (words, out.stdout)
        out = subprocess.run([exe, "-c", f"source {script}; complete -C 't2l convert --que'"], capture_output=True, text=True)
        assert "--queue-size" not in out.stdout


ZSH_PROBE = """
_describe() { : }
compdef() { : }
_arguments() {
  if [[ $1 == -C ]]; then state=args; line=($T2L_CMD); return 0; fi
  print -rl -- "$@"
}
source %s
_t2l
"""


def test_zsh_script_offers_each_command_exactly_its_options(tmp_path: Path) -> None:
    """Run the zsh script with a stand-in `_arguments` that prints its specs: each command's specs (the shared ones
    expanded from their arrays) name exactly that command's options."""
    exe = shutil.which("zsh")
    if exe is None:
        pytest.skip("zsh is not installed here (apt-get install zsh); the drift test above still covers the script")
    probe = tmp_path / "probe.zsh"
    probe.write_text(ZSH_PROBE % shlex.quote(str(devtools.COMPLETIONS_DIR / "t2l.zsh")))
    _, cmds = devtools.command_tree()
    for c in cmds:
        out = subprocess.run([exe, str(probe)], capture_output=True, text=True, env={**os.environ, "T2L_CMD": c.name}, check=True)
        offered = {m.group(1) for line in out.stdout.splitlines() if (m := re.match(r"(?:\([^)]*\))?\*?(-[-\w]+)\[", line))}
        assert offered == {n for o in c.options for n in o.names}, c.name


def test_devtools_check_reports_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, help_texts: dict[str, str]) -> None:
    monkeypatch.setattr(devtools, "help_texts", lambda: help_texts)
    monkeypatch.setattr(devtools, "COMPLETIONS_DIR", tmp_path / "completions")
    readme = tmp_path / "README.md"
    readme.write_text("# t2l\n\nSee [the reference](docs/reference.md) and [the demo](demo/tasks.jsonl).\n")
    monkeypatch.setattr(devtools, "README", readme)
    monkeypatch.setattr(devtools, "REFERENCE", tmp_path / "docs" / "reference.md")
    monkeypatch.setattr(devtools, "INDEX", tmp_path / "docs" / "index.md")
    monkeypatch.setattr(devtools, "ROOT", tmp_path)
    assert set(devtools.stale()) == {"completions/t2l.bash", "completions/t2l.zsh", "completions/t2l.fish",
                                     "docs/reference.md (command reference)", "docs/index.md (from README.md)"}
    assert devtools.main(["completions"]) == 0 and devtools.main(["docs"]) == 0
    assert devtools.stale() == []
    text = (tmp_path / "docs" / "reference.md").read_text()
    assert text.startswith("# Command reference\n") and "## `t2l bench`" in text
    index = (tmp_path / "docs" / "index.md").read_text()
    assert "[the reference](reference.md)" in index and "the demo (`demo/tasks.jsonl`)" in index
    assert devtools.main(["bogus"]) == 2


@pytest.mark.slow
def test_help_is_fast() -> None:
    """`t2l --help` median wall time over 10 runs (architecture.md 7.3: target 0.3 s, hard ceiling 1 s)."""
    import statistics
    import time

    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "t2lcli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 1.0, times
