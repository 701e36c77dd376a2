"""Issue 11 (3): concurrency. Two real `t2l generate` processes write the same output at the same time (both inside
their write window, thanks to the slow-disk child of test_hardening_kill): exactly one wins, the result is byte for
byte one of the two complete adapters (never a mix), and the loser exits 1 with one clear line.
Two processes filling the model cache at once: one converts, the other waits on the lock and reuses the result
(a stand-in converter here; the real GGUF case is tests/test_models.py::test_real_gguf_two_processes_convert_once_then_cache).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest
from hardening_common import report_at_end
from test_hardening_kill import TMP_MARK, _env, _temps, classify, snapshot
from test_hardening_kill import child as child  # noqa: F401 - fixture

STATS: dict[str, Counter] = {}


_report = report_at_end("concurrency", lambda: {k: dict(v) for k, v in STATS.items()})


def _race(child, argvs: list[list[str]], envs: list[dict]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, str(child), *a], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a, e in zip(argvs, envs, strict=True)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("rounds,force", [pytest.param(1, False, id="default"), pytest.param(1, True, id="default-force"),
                                          pytest.param(15, False, id="slow", marks=pytest.mark.slow),
                                          pytest.param(15, True, id="slow-force", marks=pytest.mark.slow)])
def test_two_generates_same_output(child, tiny_checkpoint_dir, tmp_path, rounds, force):
    ck = str(tiny_checkpoint_dir)
    descs = ["Answer math questions.", "Translate into French."]
    home = tmp_path / "home"
    refs = {}
    for i, d in enumerate(descs):
        subprocess.run([sys.executable, str(child), "generate", d, "-c", ck, "-o", str(tmp_path / f"ref{i}")], env=_env(home), check=True,
                       capture_output=True)
        refs[f"writer {i}"] = snapshot(tmp_path / f"ref{i}")
    stats = STATS.setdefault(f"two generate processes, same -o{' --force' if force else ''}", Counter())
    for r in range(rounds):
        out = tmp_path / "race" / f"o{r}"
        extra = ["--force"] if force else []
        # 0.4 s pauses inside each write: both processes are past the early "output exists" check and writing at once
        res = _race(child, [["generate", d, "-c", ck, "-o", str(out), *extra] for d in descs], [_env(home, 0.4)] * 2)
        # counted from the folder itself before classify() fails the test on it: anything but one writer's whole adapter
        stats["partial or mixed outputs"] += snapshot(out) not in refs.values()
        winner = classify(out, refs)
        assert winner in refs, winner
        codes = sorted(p.returncode for p in res)
        stats["rounds"] += 1
        stats[f"result = the complete adapter of {winner}"] += 1
        if force:  # both may succeed (the later replaces the earlier); the folder is always one whole adapter
            assert all(c == 0 for c in codes), [p.stderr[-500:] for p in res]
            stats["both exit 0 (the last writer's adapter stays)"] += 1
        else:
            assert codes == [0, 1], [p.stderr[-1000:] for p in res]
            loser = next(p for p in res if p.returncode == 1)
            line = _one_error_line(loser.stderr)
            assert "output appeared while writing" in line or "output already exists" in line, line
            stats["loser: " + ("lost at the rename (both wrote at once)" if "appeared" in line else "refused before writing")] += 1
            assert "--force" in loser.stderr  # the hint names the way out
            stats["loser exit 1 with one clear line"] += 1
            winner_idx = next(i for i, p in enumerate(res) if p.returncode == 0)
            assert winner == f"writer {winner_idx}"
        assert not [p for p in (tmp_path / "race").iterdir() if p.name.startswith(TMP_MARK)]  # losers clean up after themselves


def test_two_batches_same_folder(child, tiny_checkpoint_dir, tmp_path):
    """Two batches into one folder: every adapter folder is whole, the loser stops with one line."""
    ck = str(tiny_checkpoint_dir)
    src = tmp_path / "t.txt"
    src.write_text("".join(f"Task {i}: answer question {i}.\n" for i in range(6)))
    home = tmp_path / "home"
    subprocess.run([sys.executable, str(child), "generate", "-f", str(src), "-c", ck, "-o", str(tmp_path / "ref")], env=_env(home),
                   check=True, capture_output=True)
    out = tmp_path / "race"
    res = _race(child, [["generate", "-f", str(src), "-c", ck, "-o", str(out)]] * 2, [_env(home, 0.2)] * 2)
    codes = sorted(p.returncode for p in res)
    assert codes in ([0, 1], [1, 1]), [p.stderr[-800:] for p in res]
    for p in res:
        if p.returncode:
            assert "exists" in _one_error_line(p.stderr) or "appeared" in _one_error_line(p.stderr)
    names = {p.name for p in out.iterdir() if not p.name.startswith(TMP_MARK)}
    for name in names:
        assert classify(out / name, {"complete": snapshot(tmp_path / "ref" / name)}) == "complete"
    assert not _temps(out)
    STATS.setdefault("two batch processes, same folder", Counter()).update({"runs": 1, f"exit codes {codes}": 1,
                                                                              "whole adapters": len(names)})


def test_two_processes_fill_the_model_cache(child, tiny_base_dir, tmp_path):
    """Two processes resolve the same packaged model into an empty T2L_HOME at once: one converts (under the file
    lock), the other waits and reuses it; both succeed with the same folder, and the cache is complete."""
    from test_hardening_kill import _cache_state

    home = tmp_path / "home"
    env = _env(home, 0.3, T2L_KILLTEST_CONVERT=str(tiny_base_dir))
    t0 = time.perf_counter()
    res = _race(child, [[], []], [env, env])
    assert [p.returncode for p in res] == [0, 0], [p.stderr[-800:] for p in res]
    assert res[0].stdout == res[1].stdout
    converted = [p for p in res if "converting" in p.stderr]
    assert len(converted) == 1, [p.stderr for p in res]
    assert _cache_state(home, tiny_base_dir) == "complete"
    assert sorted(p.name for p in (home / "models").iterdir()) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]
    STATS.setdefault("two processes converting into one cache", Counter()).update(
        {"runs": 1, "conversions": len(converted), "both exit 0": 1, "seconds": round(time.perf_counter() - t0)})
