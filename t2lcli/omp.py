"""How idle OpenMP threads wait: the one rule, chosen before torch is imported (torch's libgomp reads it once).

A forward pass is a chain of short parallel regions (144 GEMMs plus norms and activations for a 24-layer encoder over
20 tokens). Between two of them a worker thread either spins or sleeps; waking a sleeping one costs tens of
microseconds per region, which is most of the gap between a warm generate and its GEMM floor on an idle machine
(Intel Xeon AMX, 2 cores, `t2l bench`: default shapes 18.6 -> ~9 ms, the Llama-8B shapes' encoder 85 -> 57 ms). On an
oversubscribed machine the opposite holds: a spinning thread takes the core the thread it waits for needs (a warm
generate ~1,000 ms instead of ~90 ms at load ~4 per core). So:

- the machine is not oversubscribed (1-minute load average below 1.5 runnable tasks per usable core): a bounded spin,
  `GOMP_SPINCOUNT=30000` (about a millisecond; then the thread sleeps, so an idle server does not burn a core);
- otherwise `OMP_WAIT_POLICY=PASSIVE` (sleep at once);
- either variable already set by the user: left as it is (`OMP_WAIT_POLICY=ACTIVE`, `PASSIVE`, or a spin count).

OpenBLAS (numpy's BLAS, one of the kernels `kernel: auto` measures) runs in the calling thread
(`OPENBLAS_NUM_THREADS=1` unless set): its own thread pool busy-waits after each call, and on the same cores as
OpenMP's spinning threads the two pools took turns — oneDNN and torch GEMMs timed right after an OpenBLAS one measured
5-10x slow (the bench's floor moved by 50% between runs). OpenBLAS wins only shapes where one thread is enough (a
one-row GEMV: 5 us), and the kernel choice measures it as it runs, single-threaded.

Measured side by side on the same machine with 0, 2, 3, 4 and 6 busy processes beside it: the spin is faster up to 3
(5 runnable tasks on 2 cores), passive from 4; the threshold keeps to the safe side of that.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = "30000"
BUSY_PER_CORE = 1.5
USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
BLAS_VAR = "OPENBLAS_NUM_THREADS"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose(load1: float | None, cores: int) -> dict[str, str]:
    """The variables for a machine at this 1-minute load average (None: unknown -> the safe passive wait)."""
    if load1 is not None and load1 < BUSY_PER_CORE * max(1, cores):
        return {"GOMP_SPINCOUNT": SPIN_COUNT}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def apply(environ: MutableMapping[str, str] | None = None) -> str:
    """Set the wait policy in `environ` (default os.environ) unless the user chose one; returns what is in effect."""
    env = os.environ if environ is None else environ
    if not any(v in env for v in USER_VARS):
        try:
            load1: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            load1 = None
        env.update(choose(load1, usable_cores()))
        env["T2L_OMP_WAIT"] = "auto"
    env.setdefault(BLAS_VAR, "1")
    return describe(env)


def describe(environ: MutableMapping[str, str] | None = None) -> str:
    """The wait policy as the environment sets it, for reports: e.g. 'spin 30000 (auto)' or 'passive (user)'."""
    env = os.environ if environ is None else environ
    who = "auto" if env.get("T2L_OMP_WAIT") == "auto" else "user"
    if "GOMP_SPINCOUNT" in env:
        wait = f"spin {env['GOMP_SPINCOUNT']} ({who})"
    elif "OMP_WAIT_POLICY" in env:
        wait = f"{env['OMP_WAIT_POLICY'].lower()} ({who})"
    else:
        wait = "libgomp default (spin 300000)"
    return f"{wait}; OpenBLAS threads {env.get(BLAS_VAR, 'default')}"
