"""The serving engine: one loaded base model, adapters made in memory by generate's `Generator`, and a scheduler
thread that decodes queued requests together in one batch, each row with its own LoRA (or none).

Batching: the scheduler takes up to `max_batch` waiting requests, left-pads their prompts, runs one prefill and then
one decode step per token for all rows at once (the HF model's KV cache), with per-row LoRA factors through
`lora_hooks.apply_factors` + `row_factors`. A row that finishes (EOS, a stop string, `max_tokens`, or its client
went away) leaves the batch; requests that arrive meanwhile are prefilled and join it (their KV rows merged in,
left-padded) while there is room, so nobody waits for the longest answer of a batch to end.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import torch

from t2lcli.engine.serve.cache import AdapterCache, CacheEntry
from t2lcli.engine.serve.jobs import Job, QueueFull, ServeSettings, Sink
from t2lcli.engine.serve.scheduler import Scheduler
from t2lcli.errors import InputError

__all__ = ["AdapterServing", "Job", "QueueFull", "ServeEngine", "ServeSettings", "Sink", "load_generator"]


class AdapterServing:
    """What every serving backend shares: the adapter generator, the tokenizer (prompts are token ids made here, so
    both backends see the same ones), the adapter cache and its request keys. A backend adds `submit(job)`, `close()`,
    `scheduler.waiting` and `_attach(adapter, id)` (how an adapter becomes usable by its decoder)."""

    backend = "hf"
    scheduler: Any  # set by each backend: its queue (`waiting`) and decoder loop

    def __init__(self, generator: Any, tokenizer: Any, base_name: str, context: int, eos_ids: set[int],
                 settings: ServeSettings | None = None, metrics: Any = None) -> None:
        self.gen = generator
        self.tok = tokenizer
        self.base_name = base_name
        self.settings = settings or ServeSettings()
        self.metrics = metrics
        self.context = context
        self.eos_ids = eos_ids
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0))
        self.cache = AdapterCache(self.settings.max_adapters, self.settings.max_adapter_bytes,
                                  on_evict=(lambda e: metrics.evictions.inc()) if metrics else None)
        self._gen_lock = threading.Lock()
        self.adapters_generated = 0

    # ---- adapters -------------------------------------------------------------------------------------------

    def request_key(self, description: str, scale: float, scaling: str) -> str:
        """What a request asks for, known before generating: matches requests to cached entries (not their id)."""
        ck = self.gen.ckpt
        key = json.dumps([ck.sha256 or str(ck.path), description, float(scale), scaling], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def make_adapter(self, description: str, scale: float, scaling: str, name: str | None) -> CacheEntry:
        """Generate one adapter: what `t2l generate` writes for the same description, under the id
        `t2l generate --json` reports for it (the sha256 of its float32 safetensors file)."""
        from t2lcli.engine.adapters import adapter_sha256
        from t2lcli.engine.generate import GenerateOptions

        t0 = time.perf_counter()
        with self._gen_lock:
            adapter = self.gen.generate([description], GenerateOptions(scale=scale, scaling=scaling))[0]
            self.adapters_generated += 1
        ident = adapter_sha256(adapter, torch.float32)
        factors, extra_bytes, path = self._attach(adapter, ident)
        ms = (time.perf_counter() - t0) * 1000
        nbytes = sum(t.numel() * t.element_size() for t in adapter.tensors.values()) + extra_bytes
        info = {"name": name, "description": adapter.meta["description"], "scale": scale, "scaling": scaling,
                "generate_ms": round(ms, 3), "created": int(time.time())}
        if self.metrics:
            self.metrics.adapter_ms.observe(ms)
        return CacheEntry(ident, adapter, factors, adapter.scaling, nbytes, info, path=path)

    def _attach(self, adapter: Any, ident: str) -> tuple[dict[str, tuple[Any, Any]], int, Any]:
        """(LoRA factors for the hooks, bytes they add beyond the CPU tensors, folder on disk or None)."""
        raise NotImplementedError

    # ---- prompts --------------------------------------------------------------------------------------------

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            try:
                text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # a template that rejects the roles/order (e.g. two system messages)
                raise InputError(f"the model's chat template rejects these messages: {str(exc).splitlines()[0][:200]}") from None
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return list(self.tok(text)["input_ids"])

    def text_ids(self, prompt: str) -> list[int]:
        return list(self.tok(prompt)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ServeEngine(AdapterServing):
    """The hf backend: base model + tokenizer + adapter generator + cache + scheduler."""

    def __init__(self, generator: Any, model: Any, tokenizer: Any, base_name: str, settings: ServeSettings | None = None,
                 metrics: Any = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) is not None else None
        eos_ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        super().__init__(generator, tokenizer, base_name, context, eos_ids, settings, metrics)
        self.scheduler = Scheduler(self)

    @classmethod
    def load(cls, checkpoint: str | None, base_model: str | None, profile: Any, settings: ServeSettings | None = None,
             metrics: Any = None, trust_remote_code: bool = False) -> ServeEngine:
        from t2lcli.engine.base_model import load_base_model

        gen, base = load_generator(checkpoint, base_model, profile, trust_remote_code)
        model, tok = load_base_model(base, profile.base)
        engine = cls(gen, model, tok, str(base), settings, metrics)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """Load the encoder, run the hypernetwork (`Generator.warm_up`) and the base once, so the first request pays
        none of them."""
        self.gen.warm_up()
        with torch.no_grad():
            ids = torch.tensor([[self.pad_id]], device=self.device)
            self.model(input_ids=ids)

    def _attach(self, adapter: Any, ident: str) -> tuple[dict[str, tuple[Any, Any]], int, Any]:
        """In memory: the A/B factors on the base model's device, for the forward hooks."""
        from t2lcli.engine.lora_hooks import adapter_factors

        factors = adapter_factors(adapter, self.device)
        extra = sum(t.numel() * t.element_size() for ab in factors.values() for t in ab) if self.device.type != "cpu" else 0
        return factors, extra, None

    def submit(self, job: Job) -> None:
        self.scheduler.submit(job)

    def close(self) -> None:
        self.scheduler.stop()


def load_generator(checkpoint: str | None, base_model: str | None, profile: Any, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The checkpoint's `Generator` (on the profile's devices) and the base model it is for (checked against --base-model)."""
    from t2lcli.engine.generate import Generator, check_base_matches

    if profile.threads:
        torch.set_num_threads(profile.threads)
    gen = Generator.load(checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype,
                         encoder_device=profile.encoder.device, trust_remote_code=trust_remote_code,
                         encoder_dtype=profile.encoder.dtype)
    check_base_matches(gen.ckpt, base_model)
    return gen, str(base_model or gen.ckpt.base_model)
