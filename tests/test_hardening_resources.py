"""Issue 11 (5): resource bounds. Descriptions are length-limited with a clear message before anything loads; batch
files stream (long lines are skipped in bounded pieces; peak RSS of 1k vs 100k lines measured in a slow test); a
full disk during a write leaves no partial output (a writer patched to fail with ENOSPC half-way, and a real 128 KiB
tmpfs in a private mount namespace where `unshare` and root allow it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hardening_common import report_at_end

from t2lcli.descriptions import MAX_DESCRIPTION_CHARS, MAX_LINE_BYTES, BadLine, Item, iter_items
from t2lcli.engine.atomic import TMP_MARK

FIGURES: dict[str, dict] = {}


_report = report_at_end("resources", lambda: FIGURES)


def _no_temps(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.rglob("*") if p.name.startswith(TMP_MARK)]


# ------------------------------------------------------------------------------------------------- descriptions


def test_description_limit_is_clear_and_checked_before_loading(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    from t2lcli.engine import generate as gen_mod

    ok = runner.invoke(cli_app, ["generate", "a" * MAX_DESCRIPTION_CHARS, "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output

    loads = []

    def never(*a, **k):
        loads.append(a)
        raise AssertionError("the checkpoint was loaded for an over-long description")

    monkeypatch.setattr(gen_mod.Generator, "load", classmethod(never))
    refused = 0
    for text in ("a" * (MAX_DESCRIPTION_CHARS + 1), "word " * 200_000):  # just over, and 1 MB
        res = runner.invoke(cli_app, ["generate", text, "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "long")])
        assert res.exit_code == 1 and "Traceback" not in res.output
        line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
        n = len(text.strip())
        assert f"description is {n} characters; the limit is {MAX_DESCRIPTION_CHARS}" in line
        assert "hint:" in res.stderr and not (tmp_path / "long").exists()
        refused += 1
    assert loads == []
    FIGURES["description limit"] = {"limit (characters)": MAX_DESCRIPTION_CHARS, "over-long descriptions refused": refused,
                                    "checkpoint loads for them": len(loads)}


def test_batch_long_lines_are_reported_and_skippable(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    with open(src, "wb") as fh:
        fh.write(b"Answer math questions.\n")
        fh.write(b"y" * (20 * MAX_LINE_BYTES) + b"\n")  # a 20 MB line
        fh.write(b"z " * (MAX_DESCRIPTION_CHARS // 2 + 10) + b"\n")  # a description over the limit
        fh.write(b"Translate into French.\n")
    tracemalloc.start()
    items = list(iter_items(str(src)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [type(i) for i in items] == [Item, BadLine, BadLine, Item]
    assert items[1].reason == f"line is longer than {MAX_LINE_BYTES} bytes"
    assert items[2].reason.startswith("description is 20019 characters; the limit is")
    assert peak < 2.5 * MAX_LINE_BYTES, peak  # the 20 MB line is never held whole

    res = runner.invoke(cli_app, ["generate", "-f", str(src), "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "strict")])
    assert res.exit_code == 1 and "line 2: line is longer than" in res.stderr and not (tmp_path / "strict").exists()
    res = runner.invoke(cli_app, ["generate", "-f", str(src), "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "skip"), "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "skip").iterdir()) == ["answer-math-questions", "translate-into-french"]
    assert "skipping line 2" in res.stderr and "skipping line 3" in res.stderr
    FIGURES["batch line limits"] = {"max line bytes": MAX_LINE_BYTES, "peak traced memory reading a 20 MB line (bytes)": peak}


def test_batch_reading_streams(tmp_path):
    """40 MB of batch file (20k lines of 2 KB): reading it keeps only the adapter names, not the lines."""
    src = tmp_path / "big.txt"
    filler = "solve the task carefully " * 80
    with open(src, "w") as fh:
        for i in range(20_000):
            fh.write(f"Task {i}: {filler}\n")
    size = src.stat().st_size
    tracemalloc.start()
    n = sum(isinstance(it, Item) for it in iter_items(str(src)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 20_000 and peak < size / 10, (peak, size)
    FIGURES["batch reading (20k lines, 2 KB each)"] = {"file bytes": size, "peak traced bytes": peak,
                                                       "bytes per line kept (adapter names for uniqueness)": round(peak / n)}


HWM = """
import atexit, os, sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["T2L_HWM_FILE"], "w").write(line.split()[1])
atexit.register(_hwm)
sys.argv = ["t2l", *sys.argv[1:]]
from t2lcli.cli import main
main()
"""


@pytest.mark.slow
def test_batch_peak_rss_1k_vs_100k_lines(tiny_checkpoint_dir, tmp_path):
    """Peak RSS (the child's own VmHWM) of `t2l generate --from-file` on 1k and 100k lines with the tiny checkpoint.
    Output goes to /dev/shm when it is there (100k fsyncs on a shared disk would take most of an hour)."""
    shm = Path("/dev/shm")
    root = Path(os.environ.get("T2L_RSS_OUT") or (shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path))
    script = tmp_path / "hwm.py"
    script.write_text(HWM)
    rss, secs = {}, {}
    for n in (1_000, 100_000):
        src = tmp_path / f"b{n}.txt"
        src.write_text("".join(f"task {i}: solve math word problems step by step\n" for i in range(n)))
        out = root / f"t2l-rss-{os.getpid()}-{n}"
        hwm = tmp_path / f"hwm{n}"
        env = {**os.environ, "T2L_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1", "T2L_HWM_FILE": str(hwm)}
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, str(script), "generate", "-f", str(src), "-c", str(tiny_checkpoint_dir), "-o", str(out),
                                  "--batch-size", "64"], env=env, capture_output=True, text=True, timeout=3600)
            assert res.returncode == 0, res.stderr[-2000:]
            assert len(res.stdout.splitlines()) == n and sum(1 for _ in out.iterdir()) == n
        finally:
            shutil.rmtree(out, ignore_errors=True)
        secs[n] = round(time.perf_counter() - t0)
        rss[n] = int(hwm.read_text()) / 1024
    growth = rss[100_000] - rss[1_000]
    FIGURES["batch peak RSS (tiny checkpoint, --batch-size 64)"] = {
        "1k lines MiB": round(rss[1_000], 1), "100k lines MiB": round(rss[100_000], 1), "growth MiB": round(growth, 1),
        "seconds": secs, "output on": str(root)}
    assert growth < 64, rss


# ---------------------------------------------------------------------------------------------------- disk full


def _enospc_after(monkeypatch, calls_ok: int, as_safetensors: bool = False) -> list[int]:
    """The two safetensors writers (safetensors.torch.save_file, and `write_safetensors_sha256` for adapters) write
    half of the file and then fail with ENOSPC (after `calls_ok` good calls between them),
    as an OSError or, like the real library on a full disk, as SafetensorError("... (os error 28)")."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    import t2lcli.engine.atomic as atomic

    real, real_sha = st.save_file, atomic.write_safetensors_sha256
    seen = [0]

    def half_then_full(path) -> None:  # the disk fills up half-way through the file
        seen[0] += 1
        if seen[0] > calls_ok:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            if as_safetensors:
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def save_file(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        half_then_full(filename)

    def write_safetensors_sha256(tensors, path, metadata=None):  # adapters: serialised in memory, hashed, then written
        digest = real_sha(tensors, path, metadata)
        half_then_full(path)
        return digest

    monkeypatch.setattr(st, "save_file", save_file)
    monkeypatch.setattr(atomic, "write_safetensors_sha256", write_safetensors_sha256)
    return seen


def _disk_full_line(res) -> None:
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output[-2000:]
    assert "error: no space left on device; nothing partial was kept" in res.stderr


DISK_FULL = "disk full (patched writer, ENOSPC half-way)"


def _left_behind(case: str, root: Path, kept: dict[str, dict[str, bytes]] | None = None, adapters: bool = False) -> dict[str, int]:
    """What a write that failed with ENOSPC left under `root`, counted and recorded for the report: folders in `kept`
    must hold their old bytes, other entries must be complete adapters (`adapters`) or not be there at all."""
    from test_hardening_kill import snapshot

    from t2lcli.engine.adapters import load_adapter

    kept = kept or {}
    entries = sorted(p for p in root.iterdir() if not p.name.startswith(TMP_MARK)) if root.exists() else []
    complete, partial = 0, []
    lost = [name for name, files in kept.items() if not (root / name).is_dir() or snapshot(root / name) != files]
    for p in entries:
        if p.name in kept:
            continue
        try:
            if not adapters:
                raise ValueError("no output was expected")
            load_adapter(p)
            complete += 1
        except Exception:
            partial.append(p.name)
    temps = [p.name for p in root.rglob(f"{TMP_MARK}*")] if root.exists() else []
    figures = {"complete adapters": complete, "old versions kept": len(kept) - len(lost), "old versions lost": len(lost),
               "partial outputs": len(partial), "temporaries left": len(temps)}
    FIGURES.setdefault(DISK_FULL, {})[case] = figures
    assert partial == [] and temps == [] and lost == [], (case, partial, temps, lost)
    return figures


@pytest.mark.parametrize("as_safetensors", [False, True], ids=["OSError", "SafetensorError"])
def test_disk_full_generate_single_and_force(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch, as_safetensors):
    ck = str(tiny_checkpoint_dir)
    assert runner.invoke(cli_app, ["generate", "Translate into French.", "-c", ck, "-o", str(tmp_path / "old")]).exit_code == 0
    from test_hardening_kill import snapshot

    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    old = {"old": snapshot(tmp_path / "old")}
    _enospc_after(monkeypatch, 0, as_safetensors)
    kind = "SafetensorError" if as_safetensors else "OSError"
    _disk_full_line(runner.invoke(cli_app, ["generate", "Answer math questions.", "-c", ck, "-o", str(tmp_path / "new")]))
    assert not (tmp_path / "new").exists() and _no_temps(tmp_path)
    _left_behind(f"generate ({kind})", tmp_path, old)
    _disk_full_line(runner.invoke(cli_app, ["generate", "Answer math questions.", "-c", ck, "-o", str(tmp_path / "old"), "--force"]))
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before and _no_temps(tmp_path)  # the old version
    assert _left_behind(f"generate --force ({kind})", tmp_path, old)["old versions kept"] == 1


def test_disk_full_text_files(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    """ENOSPC while writing README.md (after the weights) leaves nothing either."""
    real = Path.write_text

    def write_text(self, data, *a, **k):
        if self.name == "README.md":
            real(self, data[: len(data) // 2], *a, **k)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    _disk_full_line(runner.invoke(cli_app, ["generate", "Answer math.", "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists() and _no_temps(tmp_path)
    _left_behind("README write", tmp_path)


def test_disk_full_batch_keeps_only_complete_adapters(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    from t2lcli.engine.adapters import load_adapter

    src = tmp_path / "t.txt"
    src.write_text("".join(f"Task {i}: answer question {i}.\n" for i in range(6)))
    _enospc_after(monkeypatch, 2)
    res = runner.invoke(cli_app, ["generate", "-f", str(src), "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "out"), "--json"])
    _disk_full_line(res)
    done = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(done) == 2 and len(res.stdout.splitlines()) == 2 and _no_temps(tmp_path / "out")
    for name in done:
        load_adapter(tmp_path / "out" / name)
    assert _left_behind("batch of 6", tmp_path / "out", adapters=True)["complete adapters"] == 2


def test_disk_full_merge_and_convert(runner, cli_app, tiny_base_dir, tmp_path, monkeypatch):
    from test_merge import make_adapter
    from test_official import make_official

    a = make_adapter(tiny_base_dir, tmp_path / "a", r=4, seed=1)
    b = make_adapter(tiny_base_dir, tmp_path / "b", r=4, seed=2)
    official = make_official(tmp_path / "official")
    _enospc_after(monkeypatch, 0)
    cases = {"merge combine": ["merge", str(a), str(b), "-o", str(tmp_path / "out" / "ab")],
             "merge --into-base": ["merge", str(a), "--into-base", "--base-model", str(tiny_base_dir), "-o", str(tmp_path / "out" / "full")],
             "convert": ["convert", str(official), "-o", str(tmp_path / "out" / "conv")]}
    for case, args in cases.items():
        _disk_full_line(runner.invoke(cli_app, args))
        _left_behind(case, tmp_path / "out")
    left = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert left == [], left  # no output folder and no temporary


UNSHARE_SCRIPT = r"""
set -u
mount -t tmpfs -o size=128k tmpfs "$MNT"
"$PY" -m t2lcli generate -f "$SRC" -c "$CK" -o "$MNT/out" --json > "$MNT/../stdout.txt" 2> "$MNT/../stderr.txt"
echo "$?" > "$MNT/../rc.txt"
dd if=/dev/zero of="$MNT/fill" bs=4k count=1000 2>/dev/null
"$PY" -m t2lcli generate "Answer math." -c "$CK" -o "$MNT/single" 2> "$MNT/../stderr_single.txt"
echo "$?" > "$MNT/../rc_single.txt"
"$PY" - "$MNT" > "$MNT/../check.json" <<'EOF'
import json, os, sys
from pathlib import Path
from t2lcli.engine.adapters import load_adapter
mnt = Path(sys.argv[1])
names = sorted(p.name for p in (mnt / "out").iterdir()) if (mnt / "out").exists() else []
partial = []
for n in names:
    if not n.startswith(".t2l-tmp-"):
        try:
            load_adapter(mnt / "out" / n)
        except Exception as exc:
            partial.append(f"{n}: {type(exc).__name__}")
print(json.dumps({"entries": names, "partial": partial, "single_exists": (mnt / "single").exists(),
                  "temps": [p.name for p in mnt.rglob(".t2l-tmp-*")]}))
EOF
"""


def test_real_full_tmpfs(tiny_checkpoint_dir, tmp_path):
    """A real 128 KiB tmpfs (private mount namespace): a 40-line batch stops at ENOSPC with one line, every folder
    left is a complete adapter, no temporary remains; a single generate into the full tmpfs leaves nothing."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private tmpfs mount")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m not permitted here: {probe.stderr.decode()[:200]}")
    mnt = tmp_path / "box" / "mnt"
    mnt.mkdir(parents=True)
    src = tmp_path / "t.txt"
    src.write_text("".join(f"Task {i}: answer question {i} step by step.\n" for i in range(40)))
    env = {**os.environ, "MNT": str(mnt), "PY": sys.executable, "SRC": str(src), "CK": str(tiny_checkpoint_dir), "T2L_LOAD_PLUGINS": "",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["unshare", "-m", "bash", "-c", UNSHARE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    box = tmp_path / "box"
    rc, err = int((box / "rc.txt").read_text()), (box / "stderr.txt").read_text()
    check = json.loads((box / "check.json").read_text())
    assert rc == 1 and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and ("no space left on device" in lines[0] or "No space left on device" in lines[0]), err[-1000:]
    written = [n for n in check["entries"] if not n.startswith(TMP_MARK)]
    assert check["partial"] == [], check["partial"]
    assert 0 < len(written) < 40 and check["temps"] == [] and len((box / "stdout.txt").read_text().splitlines()) == len(written)
    rc_single, err_single = int((box / "rc_single.txt").read_text()), (box / "stderr_single.txt").read_text()
    assert rc_single == 1 and "Traceback" not in err_single and not check["single_exists"], err_single[-1000:]
    FIGURES["disk full (real 128 KiB tmpfs)"] = {"batch of 40: complete adapters written before ENOSPC": len(written) - len(check["partial"]),
                                                 "partial outputs": len(check["partial"]), "temporaries left": len(check["temps"]),
                                                 "single into a full tmpfs": "a folder was left" if check["single_exists"] else "nothing written",
                                                 "messages": [lines[0], next(ln for ln in err_single.splitlines() if ln.startswith("error:"))]}
