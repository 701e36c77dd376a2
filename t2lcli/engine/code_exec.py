"""Run model-written Python for the code benchmarks (HumanEval, MBPP) — only when the user passed --allow-code-exec.

Each program runs in its own `python -I` subprocess, in an empty temporary folder, with a wall-clock timeout, CPU and
memory limits, no stdin, a scrubbed environment, and the socket module disabled (so ordinary network calls fail).
This keeps honest mistakes (infinite loops, huge allocations, stray downloads) contained; it is NOT a security
sandbox against deliberately malicious code. Use a throwaway container for untrusted models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

from t2lcli.errors import T2LError

_state = {"allowed": False}
_lock = threading.Lock()

# prepended to every program: no sockets, no subprocesses from inside
PRELUDE = """\
import socket as _s
def _no_net(*a, **k):
    raise OSError("network access is disabled while t2l evaluates generated code")
_s.socket = _no_net
_s.create_connection = _no_net
_s.getaddrinfo = _no_net
del _s
"""


def allow(flag: bool) -> None:
    """Enable or disable code execution for this process (the eval engine sets it from --allow-code-exec)."""
    with _lock:
        _state["allowed"] = bool(flag)


def allowed() -> bool:
    return _state["allowed"]


def _limits(cpu_s: int, mem_bytes: int) -> None:  # runs in the child before exec
    import resource

    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    if hasattr(resource, "RLIMIT_NPROC"):
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))


def run_program(program: str, timeout: float = 10.0, mem_mb: int = 2048) -> bool:
    """True when `program` exits with status 0 within `timeout` seconds.

    Raises:
        T2LError: code execution was not enabled with --allow-code-exec.
    """
    if not allowed():
        raise T2LError("refusing to run generated code without --allow-code-exec")
    cpu = max(1, int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="t2l-exec-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(PRELUDE + "\n" + program)
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, preexec_fn=lambda: _limits(cpu, mem_mb << 20),
            )
        except OSError:
            return False
        try:
            return proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            return False
