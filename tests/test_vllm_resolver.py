"""t2l's vLLM LoRA resolver without vLLM: model names, the adapter cache and its ids (the real server test is in
tests/test_engines.py, `make test-engines`)."""

from __future__ import annotations

import json

import pytest

from t2lcli.engine import vllm_resolver as vr


@pytest.mark.parametrize("text", ["Classify the sentiment of a review.", "Réponds en français, s'il te plaît ✓", "a/b?c=d&e#f g\nline 2"])
def test_names_round_trip_and_are_url_safe(text):
    name = vr.encode_name(text)
    assert name.startswith("t2l:b64:") and all(c.isalnum() or c in ":_-" for c in name)
    assert vr.parse_name(name) == ("description", text)
    assert vr.parse_name("t2l:" + text) == ("description", text)


@pytest.mark.parametrize(
    "name",
    ["llama", "T2L:x", "t2l:", "t2l:   ", "t2l:" + "x" * (vr.MAX_NAME_DESCRIPTION + 1), "t2l:b64:***", "t2l:b64:_w", "t2l:b64:", "t2l:a\x00b",
     None, 42],
)
def test_bad_names_are_none(name):
    assert vr.parse_name(name) is None


def test_ids_are_hex_and_int_ids_stable():
    h = "ab" * 32
    assert vr.parse_name("t2l:" + h) == ("id", h) and vr.parse_name("t2l:" + h[:12]) == ("id", h[:12])
    assert vr.parse_name("t2l:" + h[:11]) == ("description", h[:11])  # too short to be an id: a (strange) description
    assert vr.lora_int_id(h) == vr.lora_int_id(h) > 0 and vr.lora_int_id(h) != vr.lora_int_id("cd" * 32)


def test_cache_dir_prefers_env_then_tmpfs(monkeypatch, tmp_path):
    monkeypatch.setenv("T2L_VLLM_CACHE", str(tmp_path / "c"))
    assert vr.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("T2L_VLLM_CACHE")
    d = vr.cache_dir()
    assert d.name.startswith("t2l-vllm-") or d.name == "vllm-adapters"


def test_cache_generates_once_with_t2l_generate_ids(tiny_checkpoint_dir, tmp_path, runner, cli_app):
    cache = vr.T2LAdapterCache(tmp_path / "cache", checkpoint=str(tiny_checkpoint_dir))
    desc = "classify the sentiment of movie reviews"
    path = cache.for_description(desc)
    res = runner.invoke(cli_app, ["generate", desc, "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "gen"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    sha = (doc[0] if isinstance(doc, list) else doc)["sha256"]
    assert path.name == sha == vr.adapter_id(path / "adapter_model.safetensors")
    assert (path / "adapter_model.safetensors").read_bytes() == (tmp_path / "gen" / "adapter_model.safetensors").read_bytes()
    mtime = (path / "adapter_model.safetensors").stat().st_mtime_ns
    assert cache.for_description(desc) == path and (path / "adapter_model.safetensors").stat().st_mtime_ns == mtime  # not regenerated
    assert cache.lookup(sha[:12]) == path and cache.lookup("0" * 12) is None
    other = cache.for_description("translate english to german")
    assert other != path and not list((tmp_path / "cache").glob(".staging-*"))


def test_register_is_a_no_op_unless_vllm_plugins_names_t2l(monkeypatch):
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert not vr.enabled()
    vr.register()  # returns before importing vLLM (not installed in the main venv)
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver, t2l")
    assert vr.enabled()


def test_cpu_kv_cache_is_sized_for_the_model_not_for_all_ram(tmp_path, monkeypatch):
    """vLLM's CPU worker reserves 92% of RAM for its KV cache unless told a size; `t2l eval --backend vllm` tells it one."""
    from t2lcli.engine import vllm_compat as vc

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cfg = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}  # Llama-8B shapes
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(vc, "_mem_available", lambda: 64 * vc.GIB)
    per_token = 2 * 32 * 8 * 128 * 2  # K and V, bf16
    assert vc.kv_cache_bytes_cpu(tmp_path, 4096, "bfloat16") == per_token * 4096 * 8  # 8 full sequences: 4 GiB
    assert vc.kv_cache_bytes_cpu(tmp_path, 4096, "float32") == 8 * vc.GIB  # 8 GiB wanted, at the cap
    monkeypatch.setattr(vc, "_mem_available", lambda: 6 * vc.GIB)
    assert vc.kv_cache_bytes_cpu(tmp_path, 4096, "bfloat16") == 6 * vc.GIB // 4  # never more than a quarter of free memory
    monkeypatch.setattr(vc, "_mem_available", lambda: vc.GIB)
    assert vc.kv_cache_bytes_cpu(tmp_path, 256, "bfloat16") == vc.GIB // 2  # the floor
    assert vc.kv_cache_bytes_cpu(tmp_path / "missing", 4096, "float32") == vc.GIB // 2
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert vc.kv_cache_bytes_cpu(tmp_path, 4096, "float32") is None  # vLLM's own setting wins
