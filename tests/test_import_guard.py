"""`t2l --help` must not pay for torch & co: importing t2lcli.cli stays free of heavy modules."""

import subprocess
import sys

HEAVY = ["torch", "transformers", "peft", "sentence_transformers", "safetensors", "numpy", "datasets"]


def test_cli_import_is_light():
    code = "import sys, t2lcli.cli; bad = sorted(set(%r) & set(sys.modules)); print(','.join(bad))" % HEAVY
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing t2lcli.cli pulled in: {out.stdout.strip()}"


def test_help_runs_without_heavy_imports():
    code = (
        "import sys, runpy; sys.argv=['t2l','--help']\n"
        "try:\n    runpy.run_module('t2lcli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = sorted(set(%r) & set(sys.modules)); sys.stderr.write('HEAVY:' + ','.join(bad))" % HEAVY
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY:" in out.stderr and out.stderr.split("HEAVY:")[1].strip() == ""
    assert "generate" in out.stdout


# what `t2l --help` and `t2l COMMAND --help` no longer import (each cost part of the 250 ms target): pydantic (typer's
# coercion of the root's own options), importlib.metadata (the plugin scan), rich.markdown / markdown-it / pygments
# and rich.traceback / attrs (typer's help renderer imports them; t2l uses neither), yaml
NOT_FOR_HELP = ["pydantic", "importlib.metadata", "rich.markdown", "markdown_it", "pygments", "rich.traceback", "attr", "yaml"]


def _help_modules(*args: str) -> tuple[str, list[str]]:
    import os

    code = (
        f"import sys, runpy; sys.argv=['t2l', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('t2lcli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "sys.stderr.write('MODULES:' + ','.join(sorted(sys.modules)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "T2L_LOAD_PLUGINS"}  # the plugin scan runs, as for a user
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr.split("MODULES:")[1].split(",")


def test_help_imports_stay_light():
    for args in (["--help"], ["generate", "--help"], ["-v", "inspect", "--help"], ["train", "--help"]):
        text, modules = _help_modules(*args)
        assert "Usage" in text and "--help" in text
        bad = sorted(m for m in modules if m.split(".")[0] in NOT_FOR_HELP or m in NOT_FOR_HELP)
        assert bad == [], f"t2l {' '.join(args)} imported {bad[:8]}"


def test_deferred_help_modules_still_work():
    """Typer's renderer gets placeholders for rich.markdown / rich.traceback only while it is imported: using them
    gives the real classes, and a later import gets the real modules."""
    code = (
        "import sys, t2lcli.cli, typer.rich_utils as ru\n"
        "assert 'rich.markdown' not in sys.modules and 'rich.traceback' not in sys.modules\n"
        "import rich.markdown, rich.traceback\n"
        "md = ru._make_rich_text(text='**bold**', markup_mode='markdown')\n"
        "assert type(md) is rich.markdown.Markdown, type(md)\n"
        "assert ru.Traceback.from_exception == rich.traceback.Traceback.from_exception\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
