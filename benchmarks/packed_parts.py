"""The hypernetwork heads packed in parts vs on the plain weight, in one process (#23).

    .venv/bin/python benchmarks/packed_parts.py --shapes llama-3.1-8b   # after `t2l bench --shapes llama-3.1-8b` cached it

Loads the random checkpoint `t2l bench --shapes` caches under $T2L_HOME/bench, runs `Generator.factors` on one
description as `kernel: auto` runs it (heads packed in parts where oneDNN wins), then with the heads unpacked and
kept plain; prints the medians of the heads' GEMM time and of the whole hypernetwork forward, and how far the two
outputs are apart (relative to their largest magnitude).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lcli import omp  # noqa: E402

omp.apply(os.environ)

import torch  # noqa: E402

from t2lcli.engine import kernels  # noqa: E402
from t2lcli.engine.generate import Generator  # noqa: E402
from t2lcli.registry import t2l_home  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-3.1-8b")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    ckpt = t2l_home() / "bench" / f"ckpt-{args.shapes}-L"
    if not ckpt.is_dir():
        print(f"no cached checkpoint at {ckpt}: run `t2l bench --shapes {args.shapes}` first", file=sys.stderr)
        return 1
    gen = Generator.load(str(ckpt), kernel="auto")
    emb = gen.embed(["Answer grade-school math word problems step by step, showing the reasoning."])
    heads = gen.ckpt.hypernet.heads

    def run() -> tuple[float, float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        for _ in range(3):
            out = gen.factors(emb)
        hs, fs = [], []
        for _ in range(args.runs):
            with kernels.record() as calls:
                t0 = time.perf_counter()
                gen.factors(emb)
                fs.append((time.perf_counter() - t0) * 1000)
            hs.append(sum(c[5] for c in calls if c[0] == "heads") * 1000)
        return statistics.median(hs), statistics.median(fs), out

    h1, f1, out1 = run()
    layout = ", ".join(f"{m} {len(h.parts)} parts" if h.parts else f"{m} {'packed' if h.packed is not None else 'plain'}" for m, h in heads.items())
    for h in heads.values():
        h.unpack()
        h.packable = False
    h2, f2, out2 = run()
    diff = max(float((out1[m][i] - out2[m][i]).abs().max() / out2[m][i].abs().max()) for m in out1 for i in (0, 1))
    cpu, _ = kernels.cpu_model_and_flags()
    print(f"{cpu}, {torch.get_num_threads()} threads, {args.shapes}, median of {args.runs}")
    print(f"as auto runs them ({layout}): heads {h1:.1f} ms, hypernetwork forward {f1:.1f} ms")
    print(f"heads plain:                      heads {h2:.1f} ms, hypernetwork forward {f2:.1f} ms")
    print(f"max |difference| / max |value|: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
