"""Helpers shared by tests/test_hardening_*.py: hypothesis settings, per-target case counters and the report file.

Counters are written (merged) into `<pytest basetemp>/hardening_report.json` and printed as one line per module
(visible with `pytest -s`), so the figures quoted in the closing note come from a run, not from prose.
Scale the fuzzing with T2L_FUZZ_EXAMPLES (default 30 cases per CLI/engine target, 4x that for pure-Python parsers).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from t2lcli.errors import T2LError

N = int(os.environ.get("T2L_FUZZ_EXAMPLES", "30"))
_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
           HealthCheck.large_base_example]
# no shrinking by default (it can take minutes of CPU on a shared machine); T2L_FUZZ_SHRINK=1 turns it on
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target] + ([Phase.shrink] if os.environ.get("T2L_FUZZ_SHRINK") else [])
# CI runs a fixed (derandomized) search so a submission's result does not depend on luck; locally it explores anew
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=_CHECKS, database=None, print_blob=True, phases=_PHASES,
                derandomize=bool(os.environ.get("CI")))
FUZZ_CHEAP = settings(FUZZ, max_examples=4 * N)


class Tally:
    """cases[target][outcome] += 1 for every example hypothesis runs (outcome: ok | refused | ...)."""

    def __init__(self) -> None:
        self.cases: dict[str, Counter] = defaultdict(Counter)

    def add(self, target: str, outcome: str) -> None:
        self.cases[target][outcome] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {t: dict(sorted(c.items())) for t, c in sorted(self.cases.items())}


def expect_clean(fn, *args, **kwargs) -> str:
    """Run `fn`: a clean result is 'ok', a T2LError with a one-line message is 'refused'; anything else propagates."""
    try:
        fn(*args, **kwargs)
    except T2LError as exc:
        assert exc.message and "\n" not in exc.message, repr(exc.message[:300])
        assert len(exc.message) < 20_000, len(exc.message)
        return "refused"
    return "ok"


def cli_clean(res) -> str:
    """A CLI run ended cleanly: exit 0, 1 (one `error:` line) or 2 (usage); no traceback; stdout encodable."""
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output[-2000:])
    assert "Traceback" not in res.output, res.output[-3000:]
    res.stdout.encode("utf-8")  # what a real terminal/pipe would have to encode
    if res.exit_code == 1:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, res.stderr[-2000:]
    return {0: "ok", 1: "refused", 2: "usage"}[res.exit_code]


def tree(root: Path) -> set[str]:
    """Every path under `root` (relative), folders included."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def only_inside(before: set[str], after: set[str], allowed: str) -> None:
    """Every path that appeared lies inside `allowed` (a path relative to the snapshot root)."""
    new = after - before
    bad = sorted(p for p in new if p != allowed and not p.startswith(allowed.rstrip("/") + "/"))
    assert not bad, f"written outside {allowed}: {bad[:10]}"


def report(base: Path, section: str, data: dict) -> Path:
    """Merge `data` under `section` into base/hardening_report.json and print one summary line."""
    path = base / "hardening_report.json"
    with open(base / ".hardening_report.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.is_file() else {}
        current[section] = data
        path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"\n[hardening] {section}: {json.dumps(data, sort_keys=True)}\n[hardening] report: {path}\n")
    return path


def report_at_end(title: Any, figures: Any) -> Any:
    """A module-scoped autouse fixture that writes `figures()` (when not empty) to the report after the module's tests;
    `title` is a string or a function giving one (read then, so it can say what ran)."""

    @pytest.fixture(scope="module", autouse=True)
    def _report(tmp_path_factory: pytest.TempPathFactory) -> Any:
        yield
        data = figures()
        if data:
            report(tmp_path_factory.getbasetemp(), title() if callable(title) else title, data)

    return _report
