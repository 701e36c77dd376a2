"""Every example in `t2l --help`, every command's `--help` and every README or docs block marked runnable runs as written.

Help examples are extracted from the command modules; README blocks are run only when the line before the fence is
`<!-- runnable ... -->` (other sections are documentation, not tests). Each help example is fast (here, in
`make test`), slow (`-m slow`) or exempt with the reason it cannot run offline on a fresh clone; a new example that
is none of these fails `test_every_help_example_is_classified`, so examples and this list cannot drift apart.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# examples that cannot run offline on a fresh clone, and why (matched by prefix)
EXEMPT = {
    "t2l generate --checkpoint llama_8b_t2l/": "needs the official SakanaAI checkpoint and an embedding file",
    "t2l convert trained_t2l/": "needs the official SakanaAI checkpoint (a download)",
    "t2l convert SakanaAI/": "downloads from the Hub",
    "t2l generate --checkpoint ckpt/llama_8b_t2l": "needs the converted official checkpoint and an embedding file",
    "t2l bench --plan --measure": "measures on a CUDA GPU",
    "t2l eval ": "needs the benchmark/SNI data (T2L_DATA_DIR) and minutes of base-model inference per row",
    "T2L_DATA_DIR=": "needs the benchmark data",
    "t2l train default -o": "needs the SNI data and hours of training",
    "t2l train my.yaml": "trains the default recipe: needs the SNI data and hours",
    "torchrun ": "distributed training of the default recipe",
    "accelerate launch": "distributed training of the default recipe",
    "t2l COMMAND --help": "a placeholder for any command",
    "t2l serve": "starts a server that runs until stopped (tests/test_serve.py starts the real `t2l serve` process)",
}
# examples that run, but load the base model or measure for minutes: `-m slow`
SLOW = (
    "t2l generate \"Classify the sentiment of a review.\" -o out/sent --preview",
    "t2l merge out/math --into-base",
    "t2l merge out/math --export llamacpp",
    "t2l merge out/math --export ollama",
    "t2l bench",  # every measuring bench example (the --plan ones are fast, below)
    "t2l train smoke",
)
FAST_OVERRIDES = ("t2l bench --plan --profile",)
# the help groups in the order they run (later groups use what earlier ones wrote)
ORDER = ["generate", "inspect", "merge", "convert", "bench", "eval", "train", "serve", "t2l"]
# adapters the examples name as inputs (out/code, a/, b/, ...), written once before the examples run
SETUP = [
    'printf \'{"name": "code", "description": "Write a Python function for the task."}\\n{"name": "a", "description": "Answer math questions."}\\n'
    '{"name": "b", "description": "Translate English to German."}\\n{"name": "c", "description": "Name the capital city."}\\n\' > setup.jsonl',
    "t2l generate --from-file setup.jsonl -o out/",
    "t2l generate --from-file setup.jsonl -o .",
]


def help_examples() -> list[tuple[str, str]]:
    """(group, command line) for every example of `t2l --help` and each built-in command's `--help`."""
    from t2lcli import cli
    from t2lcli.plugins import BUILTIN_COMMANDS

    sources = [("t2l", cli.EXAMPLES)]
    for name, target in BUILTIN_COMMANDS.items():
        mod, attr = target.split(":")
        fn = getattr(importlib.import_module(mod), attr)
        sources.append((name, getattr(fn, "__t2l_examples__", "")))
    out = []
    for group, text in sources:
        for line in text.splitlines():
            if line.startswith("  ") and line.strip():
                out.append((group, line.strip()))
    return out


def tier(cmd: str) -> str:
    if cmd.startswith(FAST_OVERRIDES):
        return "fast"
    for prefix in EXEMPT:
        if cmd.startswith(prefix):
            return "exempt"
    return "slow" if cmd.startswith(SLOW) else "fast"


def readme_blocks(slow: bool) -> list[tuple[str, str]]:
    """(language, code) of every block in README.md and the docs pages whose fence follows a `<!-- runnable ... -->`
    line; `<!-- runnable slow ... -->` blocks (they load the base model) only with slow=True. docs/index.md is README.md
    again (generated), so it is not read twice."""
    pages = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    found = re.finditer(r"^<!-- runnable( slow)?[^\n]*-->\n```(bash|python)\n(.*?)^```", text, re.S | re.M)
    return [(m.group(2), m.group(3)) for m in found if bool(m.group(1)) == slow]


def scratch(tmp: Path) -> Path:
    """A fresh-clone stand-in: the shipped example files, and `.venv` pointing at this environment."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "demo", tmp / "demo")
    (tmp / ".venv").symlink_to(Path(sys.prefix))
    return tmp


def run(cmd: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> None:
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"$ {cmd}\nexit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, f"$ {cmd}\n{res.stderr[-3000:]}"


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "T2L_HOME": str(home), "COLUMNS": "120"}


def test_every_help_example_is_classified():
    examples = help_examples()
    assert len(examples) >= 30
    by_tier = {t: [c for _, c in examples if tier(c) == t] for t in ("fast", "slow", "exempt")}
    assert len(by_tier["fast"]) >= 15, by_tier  # most examples run in make test
    unused = [p for p in EXEMPT if not any(c.startswith(p) for _, c in examples)]
    assert not unused, f"exemptions that match no example any more: {unused}"
    unknown = sorted({g for g, _ in examples} - set(ORDER))
    assert not unknown, f"help examples of {unknown}: add the group to ORDER (and classify its examples) in {__file__}"


def _ordered(tiers: tuple[str, ...]) -> list[str]:
    seen, cmds = set(), []
    for group in ORDER:
        for g, cmd in help_examples():
            if g == group and tier(cmd) in tiers and cmd not in seen:
                seen.add(cmd)
                cmds.append(cmd)
    return cmds


def test_fast_help_examples_run(tmp_path):
    work, env = scratch(tmp_path / "clone"), env_for(tmp_path / "home")
    for cmd in [*SETUP, *_ordered(("fast",))]:
        run(cmd, work, env)
    assert (work / "out" / "math" / "adapter_model.safetensors").is_file() and (work / "adapters.png").is_file()


@pytest.mark.slow
def test_all_help_examples_run(tmp_path):
    work, env = scratch(tmp_path / "clone"), env_for(tmp_path / "home")
    for cmd in [*SETUP, *_ordered(("fast", "slow"))]:
        run(cmd, work, env, timeout=1800)


def _run_blocks(blocks: list[tuple[str, str]], tmp_path: Path, timeout: int) -> None:
    for i, (lang, code) in enumerate(blocks):
        work = scratch(tmp_path / f"clone{i}")
        if lang == "python":
            (work / "block.py").write_text(code)
            code = f"{sys.executable} block.py"
        run(code, work, env_for(tmp_path / "home"), timeout=timeout)


def test_readme_runnable_blocks(tmp_path):
    blocks = readme_blocks(slow=False)
    assert blocks, "README has no block marked runnable"
    _run_blocks(blocks, tmp_path, 600)


@pytest.mark.slow
def test_readme_runnable_slow_blocks(tmp_path):
    blocks = readme_blocks(slow=True)
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    _run_blocks(blocks, tmp_path, 1800)
