"""How idle OpenMP threads wait (t2lcli/omp.py): a bounded spin on a machine that is not oversubscribed, sleep at once on
a busy one, the user's choice always kept, OpenBLAS in the calling thread; set by `t2l` before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from t2lcli import omp

VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS", "T2L_OMP_WAIT")


@pytest.mark.parametrize(("load", "cores", "want"), [
    (0.2, 2, {"GOMP_SPINCOUNT": omp.SPIN_COUNT}),
    (2.9, 2, {"GOMP_SPINCOUNT": omp.SPIN_COUNT}),  # up to 1.5 runnable tasks per core: spinning measured faster
    (3.0, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),  # oversubscribed: a spinning thread takes the core another one needs
    (40.0, 16, {"OMP_WAIT_POLICY": "PASSIVE"}),
    (None, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),  # unknown load: the safe choice
])
def test_choose_by_load(load: float | None, cores: int, want: dict[str, str]) -> None:
    assert omp.choose(load, cores) == want


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "7"}])
def test_the_users_choice_is_kept(user: dict[str, str]) -> None:
    env = dict(user)
    said = omp.apply(env)
    assert {k: env[k] for k in user} == user and not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} - set(user)) & set(env)
    assert "(user)" in said and env["OPENBLAS_NUM_THREADS"] == "1"
    env = {**user, "OPENBLAS_NUM_THREADS": "4"}
    omp.apply(env)
    assert env["OPENBLAS_NUM_THREADS"] == "4"


def test_apply_sets_one_policy_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    env: dict[str, str] = {}
    assert omp.apply(env) == f"spin {omp.SPIN_COUNT} (auto); OpenBLAS threads 1"
    assert env == {"GOMP_SPINCOUNT": omp.SPIN_COUNT, "OPENBLAS_NUM_THREADS": "1", "T2L_OMP_WAIT": "auto"}
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    env = {}
    assert omp.apply(env).startswith("passive (auto)") and env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env
    # a child process inherits the parent's choice (and keeps saying it was automatic)
    assert omp.apply(env).startswith("passive (auto)")


@pytest.mark.parametrize("preset", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_t2l_sets_it_before_torch_is_imported(preset: dict[str, str]) -> None:
    """The real entry point in a fresh interpreter: the variables are in place when the command runs, torch is not
    imported yet (libgomp reads them once, when torch loads it)."""
    probe = (
        "import json, os, sys\n"
        "import t2lcli.cli as cli\n"
        "def app(standalone_mode=False):\n"
        f"    print(json.dumps({{k: os.environ.get(k) for k in {VARS!r}}} | {{'torch': 'torch' in sys.modules}}))\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in VARS} | preset
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["OPENBLAS_NUM_THREADS"] == "1"
    if preset:
        assert got["OMP_WAIT_POLICY"] == "ACTIVE" and got["GOMP_SPINCOUNT"] is None and got["T2L_OMP_WAIT"] is None
    else:
        assert got["T2L_OMP_WAIT"] == "auto"
        assert (got["GOMP_SPINCOUNT"], got["OMP_WAIT_POLICY"]) in ((omp.SPIN_COUNT, None), (None, "PASSIVE"))
