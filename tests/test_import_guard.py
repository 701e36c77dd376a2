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
