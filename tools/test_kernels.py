"""`make test-kernels`: the numeric tests under other kernel dispatch and thread counts, on one machine.

A test that compares numbers must pass whichever kernels the CPU gets (tests/numeric.py states the rule). This runs
the test modules that compare numbers once per configuration:

- torch's own dispatch: ATEN_CPU_CAPABILITY=default (no SIMD), =avx2, =avx512 (only where the CPU has AVX-512;
  otherwise the line says why it is skipped);
- MKL's (matmuls, BLAS): MKL_ENABLE_INSTRUCTIONS=SSE4_2, =AVX2;
- 1 and 2 threads (OMP_NUM_THREADS, which torch and MKL read at start-up; tests that set threads themselves keep
  their own).

Scope (so that the matrix takes ~12 min on an idle 2-core machine instead of ~35 for the full suite 7 times):
the first configuration (aten=default: no SIMD at all in torch's own kernels, the most different ones) runs every test module under
tests/ that uses tests/numeric.py or carries a `# bitwise:` check, in full (the suite's default selection, so no
`slow` tests). The other configurations run the tests of those modules that made a comparison through
tests/numeric.py in that first run (it logs them) or carry a bitwise check: found from the files and the log, so a
new numeric test is covered without editing a list. The rest of the suite (CLI, errors, fuzzing, plugins) compares
no floats and runs once in `make test`; so does the module in EXCLUDED below, for the reason given there.

Each configuration first runs a probe that reports what really ran (torch's CPU capability, the thread count, and
whether a matmul + softmax gives other bits than with no variable set), so a variable that this CPU ignores shows
up (on AMD CPUs MKL runs one code path whatever MKL_ENABLE_INSTRUCTIONS says). The line also gives the comparison
closest to its tolerance (tests/numeric.py logs every one).

One line per configuration with the pass/fail counts; the exit status is non-zero if any configuration fails.
`T2L_KERNEL_CONFIGS=name,name` runs only those; extra arguments are passed to pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

CONFIGS: dict[str, dict[str, str]] = {
    "aten=default": {"ATEN_CPU_CAPABILITY": "default"},  # first: it runs the whole modules and finds the numeric tests
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten=avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "mkl=SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "threads=1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "threads=2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
}
# variables that pick kernels: cleared so that each configuration changes exactly one thing
DISPATCH_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                 "OMP_NUM_THREADS", "MKL_NUM_THREADS")

PROBE = r"""
import hashlib, torch
g = torch.Generator().manual_seed(0)
a, b = torch.randn(123, 517, generator=g), torch.randn(517, 77, generator=g)
digest = hashlib.sha256((a @ b).numpy().tobytes() + torch.softmax(a, -1).numpy().tobytes()).hexdigest()[:10]
print("PROBE", torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), digest, flush=True)
"""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        m = None
    return m.group(1).strip() if m else "unknown CPU"


def skip_reason(name: str, flags: set[str]) -> str | None:
    if name == "aten=avx512":
        need = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # what torch's AVX512 kernels require
        if not need <= flags:
            return f"this CPU has no AVX-512 ({', '.join(sorted(need - flags))} missing)"
    if name == "mkl=AVX2" and "avx2" not in flags:
        return "this CPU has no AVX2"
    return None


# modules left out, with why: their comparisons hold by construction under any one configuration
EXCLUDED = {
    "test_hardening_kill.py": "kill-safety of writes; its one comparison is a resumed run against an uninterrupted one in the same "
                              "environment, and its many SIGKILLed subprocesses take minutes",
}


def numeric_modules() -> list[str]:
    out = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name in EXCLUDED:
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^from numeric import|^\s*import numeric\b", text, re.M) or "# bitwise:" in text:
            out.append(str(path.relative_to(ROOT)))
    return out


def bitwise_tests(modules: list[str]) -> set[str]:
    """Test functions with a `# bitwise:` check in their body or in a module-level helper they call."""
    import ast

    out = set()
    for mod in modules:
        text = (ROOT / mod).read_text(encoding="utf-8")
        lines = text.splitlines()
        funcs = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
        body = {f.name: "\n".join(lines[f.lineno - 1:f.end_lineno]) for f in funcs}
        marked = {name for name, src in body.items() if "# bitwise:" in src}
        for name, src in body.items():
            if name.startswith("test_") and (name in marked or any(re.search(rf"\b{h}\(", src) for h in marked - {name})):
                out.add(f"{mod}::{name}")
    return out


def logged_tests(log: Path) -> set[str]:
    """The tests that made a comparison through tests/numeric.py (their parametrisations run again as a whole)."""
    try:
        rows = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    return {parts[3].split("[", 1)[0] for parts in (r.split(" ", 3) for r in rows) if len(parts) == 4 and "::" in parts[3]}


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DISPATCH_VARS}
    env.update(extra)
    return env


def probe(env: dict[str, str]) -> tuple[str, str]:
    """(what ran, a digest of a matmul + softmax result): a digest that equals the plain run's means this CPU ran the
    same kernels under this configuration (e.g. MKL picks one code path on a CPU whatever MKL_ENABLE_INSTRUCTIONS says)."""
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    m = re.search(r"^PROBE (\S+) (\d+) (\S+)", res.stdout, re.M)
    if not m:
        return f"probe failed: {(res.stderr or res.stdout).strip()[-200:]}", ""
    return f"torch capability {m.group(1)}, {m.group(2)} threads", m.group(3)


def counts(output: str) -> dict[str, int]:
    tail = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    found = {}
    for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", tail[-1] if tail else ""):
        found[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return found


def worst(log: Path) -> str:
    """The comparison closest to its tolerance (tests/numeric.py writes one line per comparison)."""
    best = (-1.0, "", 0.0, 0.0)
    try:
        rows = log.read_text(encoding="utf-8").split("\n")
    except OSError:
        return "no comparisons logged"
    for row in rows:
        parts = row.split(" ", 3)
        if len(parts) >= 3 and not parts[0].startswith("test_numeric.py:"):  # the helper's own tests fail on purpose
            err, tol = float(parts[1]), float(parts[2])
            ratio = err / tol if tol else (0.0 if err == 0 else float("inf"))
            if ratio > best[0]:
                best = (ratio, parts[0], err, tol)
    if best[0] < 0:
        return "no comparisons logged"
    return f"{sum(1 for r in rows if r.strip())} comparisons; closest {best[0]:.0%} of its tolerance ({best[1]}: {best[2]:.1e} vs {best[3]:.1e})"


def main(argv: list[str]) -> int:
    flags = cpu_flags()
    wanted = [n.strip() for n in os.environ.get("T2L_KERNEL_CONFIGS", "").split(",") if n.strip()] or list(CONFIGS)
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        sys.stderr.write(f"test-kernels: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}\n")
        return 2
    modules = numeric_modules()
    print(f"test-kernels on {cpu_model()} ({os.cpu_count()} CPUs): {len(modules)} modules: {' '.join(Path(m).stem for m in modules)}",
          flush=True)
    for mod, why in EXCLUDED.items():
        print(f"  left out: {mod} ({why})", flush=True)
    _, plain = probe(environment({}))
    failed, lines = [], []
    selection: list[str] = []  # after the first configuration: the tests that compare numbers
    for name in wanted:
        reason = skip_reason(name, flags)
        if reason:
            line = f"{name:<14} SKIPPED: {reason}"
        else:
            env = environment(CONFIGS[name])
            what, digest = probe(env)
            what += ", matmul/softmax bits " + ("differ from the plain run" if digest != plain else "as in the plain run")
            targets = selection or modules
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                env["T2L_NUMERIC_LOG"] = log = str(Path(tmp) / "numeric.log")
                res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets, *argv], cwd=ROOT, env=env,
                                     capture_output=True, text=True)
                margin = worst(Path(log))
                if not selection:
                    selection = sorted(logged_tests(Path(log)) | bitwise_tests(modules))
                    print(f"  the other configurations run the {len(selection)} tests (all their parametrisations) that compared "
                          "numbers here or carry a bitwise check", flush=True)
            c = counts(res.stdout)
            ok = res.returncode == 0 and c.get("passed", 0) > 0
            summary = ", ".join(f"{v} {k}" for k, v in c.items()) or "no summary"
            scope = "modules" if targets is modules else "numeric tests"
            line = f"{name:<14} {'PASS' if ok else 'FAIL'}: {summary} ({scope}) in {time.perf_counter() - t0:.0f} s; {what}; {margin}"
            if not ok:
                failed.append(name)
                out = res.stdout.splitlines()
                errors = [ln for ln in out if ln.startswith("E   ")][:30]
                sys.stdout.write("\n".join(errors + out[-15:]) + "\n")
        print(line, flush=True)
        lines.append(line)
    print("test-kernels summary:", flush=True)
    for line in lines:
        print("  " + line)
    if failed:
        print(f"test-kernels: FAILED under {', '.join(failed)}")
        return 1
    print("test-kernels: every configuration passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
