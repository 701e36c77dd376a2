"""One adapter id everywhere: `t2l generate --json`'s sha256, `t2l serve`'s adapter id and the vLLM resolver's id are
the same content hash (the sha256 of the float32 `adapter_model.safetensors`), and serve's cache files entries by it."""

from __future__ import annotations

import torch

from t2lcli.engine.adapters import Adapter, adapter_sha256, peft_config, save_adapter, tensors_sha256, write_adapter
from t2lcli.engine.serve.cache import AdapterCache, CacheEntry


def _adapter(seed: int) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight": torch.randn(shape, generator=g)
               for m in ("q_proj", "v_proj") for ab, shape in (("A", (2, 8)), ("B", (8, 2)))}
    return Adapter(peft_config(2, 4, ["q_proj", "v_proj"], None), tensors, {"description": f"task {seed}"})


def test_adapter_sha256_is_the_written_files_sha256(tmp_path):
    for seed in (0, 1):
        ad = _adapter(seed)
        out = save_adapter(ad, tmp_path / f"a{seed}", dtype=torch.float32)
        assert adapter_sha256(ad, torch.float32) == tensors_sha256(out / "adapter_model.safetensors")
    assert adapter_sha256(_adapter(0)) != adapter_sha256(_adapter(1))
    half = _adapter(0)
    half.tensors = {k: v.to(torch.bfloat16) for k, v in half.tensors.items()}
    assert adapter_sha256(half) == tensors_sha256(save_adapter(half, tmp_path / "bf16") / "adapter_model.safetensors")


def test_write_adapter_returns_the_sha256_of_the_bytes_it_wrote(tmp_path):
    """The id `t2l generate --json` reports is hashed from the bytes in memory; it must be the file's hash."""
    for seed, dtype in ((0, torch.float32), (1, torch.bfloat16)):
        digest = write_adapter(_adapter(seed), tmp_path / f"w{seed}", dtype=dtype)
        assert digest == tensors_sha256(tmp_path / f"w{seed}" / "adapter_model.safetensors") == adapter_sha256(_adapter(seed), dtype)


def _entry(ad: Adapter) -> CacheEntry:
    return CacheEntry(adapter_sha256(ad), ad, {}, 1.0, 100)


def test_serve_cache_files_entries_by_content_id_and_matches_requests_by_key():
    cache = AdapterCache(max_items=4, max_bytes=10_000)
    fut, owner = cache.claim("key-a")
    assert owner and cache.claim("key-a") == (fut, False)  # a second request for the same key waits on the first
    e = cache.fulfil(_entry(_adapter(0)), "key-a")
    assert fut.result() is e and len(e.id) == 64
    again, owner = cache.claim("key-a")
    assert not owner and again.result() is e
    # another key that yields the same weights (e.g. another spelling of the scale) shares the entry, counted once
    _, owner = cache.claim("key-b")
    assert owner
    assert cache.fulfil(_entry(_adapter(0)), "key-b") is e and len(cache) == 1 and cache.nbytes == 100
    # ids: full, or a unique prefix
    other = cache.fulfil(_entry(_adapter(1)), "key-c")
    assert cache.get(e.id) is e and cache.get(e.id[:12]) is e and cache.get(other.id[:12]) is other
    common = next((n for n in range(1, 13) if e.id[:n] != other.id[:n]), 13) - 1
    assert cache.get(e.id[:common]) is None  # a prefix both share names neither
    # deleting forgets the keys: the next request for them generates again
    assert cache.delete(e.id) is e and cache.get(e.id) is None and cache.nbytes == 100
    assert cache.claim("key-a")[1] and cache.claim("key-b")[1]
    assert not cache.claim("key-c")[1]


def test_serve_cache_eviction_forgets_keys():
    cache = AdapterCache(max_items=1, max_bytes=10_000)
    cache.claim("k0")
    first = cache.fulfil(_entry(_adapter(0)), "k0")
    cache.claim("k1")
    cache.fulfil(_entry(_adapter(1)), "k1")
    assert cache.get(first.id) is None and cache.evictions == 1
    assert cache.claim("k0")[1]  # evicted: its key must not point at a missing entry
