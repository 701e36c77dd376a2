"""`t2l serve` on real models: the embedded default (SmolLM2-135M + the shipped checkpoint; slow) and a GPU profile
(gpu; an official checkpoint when T2L_OFFICIAL_CHECKPOINT names its folder)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import LiveServer

DESC = "Solve grade-school math word problems step by step, giving the final number."
INPUTS = ["Tom has 3 apples and buys 5 more. How many apples does he have?", "What is 12 times 4?"]


def _peft_greedy(adapter_dir: Path, base_dir: Path, contents: list[str], max_new_tokens: int, device: str = "cpu") -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device), str(adapter_dir)).eval()
    outs = []
    for content in contents:
        prompt = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        outs.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


def _check_serve_matches_generate(engine, runner, cli_app, tmp_path: Path, checkpoint: str | None, extra: list[str]) -> None:
    from t2lcli.engine.base_model import resolve_model

    args = ["generate", DESC, "-o", str(tmp_path / "a"), *(["--checkpoint", checkpoint] if checkpoint else []), *extra]
    res = runner.invoke(cli_app, args)
    assert res.exit_code == 0, res.output
    with LiveServer(engine) as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
        got = []
        for content in INPUTS:
            r = c.post("/v1/chat/completions", json={"model": srv.base, "messages": [{"role": "user", "content": content}], "max_tokens": 24,
                                                     "temperature": 0, "t2l": {"description": DESC}})
            assert r.status_code == 200, r.text
            got.append(r.json()["choices"][0]["message"]["content"])
    device = str(engine.device)
    want = _peft_greedy(tmp_path / "a", resolve_model(engine.base_name), INPUTS, 24, device)
    assert got == want


@pytest.mark.slow
def test_default_checkpoint_ready_fast_and_equal_to_generate_plus_peft(runner, cli_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from conftest import REAL_T2L_HOME

    from t2lcli.engine.base_model import resolve_model
    from t2lcli.engine.serve.engine import ServeEngine
    from t2lcli.hw_profiles import load_profile

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)  # the converted SmolLM2 (converted once if missing)
    resolve_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    engine = ServeEngine.load(None, None, load_profile("cpu"))
    print(f"default checkpoint + SmolLM2 engine ready in {time.perf_counter() - t0:.1f}s")
    _check_serve_matches_generate(engine, runner, cli_app, tmp_path, None, [])


@pytest.mark.gpu
def test_gpu_profile_serves_and_matches_generate(runner, cli_app, tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Under a GPU profile (fp32 base so greedy tokens compare exactly): the tiny checkpoint always; an official
    checkpoint with its 8B base when T2L_OFFICIAL_CHECKPOINT names it (bf16, answers checked for shape only)."""
    from t2lcli.engine.serve.engine import ServeEngine
    from t2lcli.hw_profiles import load_profile

    prof = load_profile("gpu-24gb", ["base.dtype=float32", "base.quantization=none"])
    engine = ServeEngine.load(str(tiny_checkpoint_dir), None, prof)
    assert engine.device.type == "cuda"
    _check_serve_matches_generate(engine, runner, cli_app, tmp_path, str(tiny_checkpoint_dir), ["--profile", "gpu-24gb"])

    official = os.environ.get("T2L_OFFICIAL_CHECKPOINT")
    if not official:
        pytest.skip("set T2L_OFFICIAL_CHECKPOINT to an official checkpoint folder (its base must be available offline) to serve it too")
    big = ServeEngine.load(official, None, load_profile("gpu-24gb"))
    with LiveServer(big) as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
        r = c.post("/v1/chat/completions", json={"model": srv.base, "messages": [{"role": "user", "content": INPUTS[0]}], "max_tokens": 32,
                                                 "temperature": 0, "t2l": {"description": DESC}})
        assert r.status_code == 200, r.text
        assert r.json()["t2l"]["adapter_id"] and r.json()["choices"][0]["message"]["content"].strip()
