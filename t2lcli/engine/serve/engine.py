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
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from t2lcli.engine.serve.cache import AdapterCache, CacheEntry
from t2lcli.errors import InputError

Sink = Callable[[dict[str, Any]], None]


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class ServeSettings:
    max_adapters: int = 64
    max_adapter_bytes: int = 1 << 30
    max_batch: int = 8
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    queue_size: int = 64
    batch_window_s: float = 0.003  # after the first request arrives, wait this long for others to join its batch


@dataclass
class Job:
    """One completion request, as the scheduler sees it."""

    prompt_ids: list[int]
    max_tokens: int
    sink: Sink  # called from the scheduler thread with {"type": "delta"|"done"|"error", ...}
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    entry: CacheEntry | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    # decode state
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    started: float = 0.0
    batch_size: int = 0


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
        """Load the encoder and run the base once, so the first request pays neither."""
        self.gen.embed(["warm up"])
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


def _joinable(cache: Any) -> bool:
    """New rows can be merged into this cache: plain dynamic layers only (no sliding windows, no static buffers)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer) is DynamicLayer and layer.keys is not None and layer.keys.dim() == 4 for layer in layers)


def _merge_rows(cache: Any, other: Any, mask: torch.Tensor, other_mask: torch.Tensor) -> torch.Tensor:
    """Append the rows of `other` to `cache`, left-padding the shorter one (masked out); returns the joint mask."""
    import torch.nn.functional as F

    width = max(mask.shape[1], other_mask.shape[1])
    for a, b in zip(cache.layers, other.layers, strict=True):
        ta, tb = a.keys.shape[-2], b.keys.shape[-2]
        a.keys = torch.cat([F.pad(a.keys, (0, 0, width - ta, 0)), F.pad(b.keys, (0, 0, width - tb, 0))])
        a.values = torch.cat([F.pad(a.values, (0, 0, width - ta, 0)), F.pad(b.values, (0, 0, width - tb, 0))])
    return torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(other_mask, (width - other_mask.shape[1], 0))])


def _select_rows(cache: Any, idx: torch.Tensor) -> None:
    """Keep only rows `idx` of a transformers KV cache."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return
    for layer in cache.layers:  # pragma: no cover - older cache classes
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]


class Scheduler:
    """A thread that forms batches from the queue and decodes them."""

    def __init__(self, engine: ServeEngine) -> None:
        self.engine = engine
        self.q: queue.Queue[Job] = queue.Queue()
        self.waiting = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="t2l-serve-scheduler", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stop.is_set():
                raise QueueFull("the server is shutting down")
            if self.waiting >= self.engine.settings.queue_size:
                raise QueueFull(f"{self.waiting} requests are already waiting (the queue holds {self.engine.settings.queue_size})")
            self.waiting += 1
        self._gauge()
        self.q.put(job)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        while True:  # anything still queued gets a clean error
            try:
                job = self.q.get_nowait()
            except queue.Empty:
                break
            job.sink({"type": "error", "message": "the server is shutting down", "code": "shutting_down"})

    def _gauge(self) -> None:
        m = self.engine.metrics
        if m:
            m.queue_depth.set(self.waiting)

    def _take(self, limit: int, wait: bool = True) -> list[Job]:
        try:
            first = self.q.get(timeout=0.1) if wait else self.q.get_nowait()
        except queue.Empty:
            return []
        jobs = [first]
        deadline = time.perf_counter() + (self.engine.settings.batch_window_s if wait else 0.0)
        while len(jobs) < limit:
            left = deadline - time.perf_counter()
            try:
                jobs.append(self.q.get(timeout=left) if left > 0 else self.q.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self.waiting -= len(jobs)
        self._gauge()
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = [j for j in self._take(self.engine.settings.max_batch) if not self._drop_cancelled(j)]
            if not jobs:
                continue
            try:
                self._decode(jobs)
            except Exception as exc:  # never kill the thread; every job of the batch gets a clean error
                msg = f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                for j in jobs:
                    j.sink({"type": "error", "message": msg, "code": "generation_failed"})

    @staticmethod
    def _drop_cancelled(job: Job) -> bool:
        if job.cancelled.is_set():
            job.sink({"type": "done", "finish_reason": "cancelled"})
            return True
        return False

    @torch.no_grad()
    def _decode(self, jobs: list[Job]) -> None:
        """Decode `jobs` as one batch; requests that arrive meanwhile are appended to `jobs` as they join it."""
        from t2lcli.engine.lora_hooks import apply_factors, row_factors

        eng = self.engine
        dev = eng.device
        n = len(jobs)
        if eng.metrics:
            eng.metrics.batch_size.observe(n)
        gens = [self._rng(j) for j in jobs]
        active = list(range(n))  # indices into `jobs` of the rows still in the batch
        handle = self._hooks(jobs, active, apply_factors, row_factors)
        t0, produced = time.perf_counter(), 0
        try:
            logits, kv, mask, next_pos = self._prefill(jobs)
            while True:
                if len(active) < eng.settings.max_batch and not self.q.empty() and _joinable(kv):
                    # continuous batching: requests that arrived meanwhile join the running batch
                    new = [j for j in self._take(eng.settings.max_batch - len(active), wait=False) if not self._drop_cancelled(j)]
                    if new:
                        handle.remove()
                        first = len(jobs)
                        jobs.extend(new)
                        gens.extend(self._rng(j) for j in new)
                        handle = self._hooks(jobs, list(range(first, len(jobs))), apply_factors, row_factors)
                        logits2, kv2, mask2, pos2 = self._prefill(new)
                        handle.remove()
                        mask = _merge_rows(kv, kv2, mask, mask2)
                        logits, next_pos = torch.cat([logits, logits2]), torch.cat([next_pos, pos2])
                        active += list(range(first, len(jobs)))
                        for ji in active:
                            jobs[ji].batch_size = max(jobs[ji].batch_size, len(active))
                        if eng.metrics:
                            eng.metrics.batch_size.observe(len(active))
                        handle = self._hooks(jobs, active, apply_factors, row_factors)
                keep, toks = [], []
                for row, ji in enumerate(active):
                    j = jobs[ji]
                    tok = self._pick(logits[row], j, gens[ji])
                    produced += 1
                    if self._advance(j, tok, len(j.prompt_ids) + len(j.generated) + 1 >= eng.context):
                        continue
                    keep.append(row)
                    toks.append(tok)
                if not keep or self._stop.is_set():
                    for row, ji in enumerate(active):
                        if row in keep:
                            self._finish(jobs[ji], "shutdown")
                    break
                if len(keep) < len(active):
                    idx = torch.tensor(keep, device=dev)
                    _select_rows(kv, idx)
                    mask, next_pos = mask[idx], next_pos[idx]
                    active = [active[r] for r in keep]
                    handle.remove()
                    handle = self._hooks(jobs, active, apply_factors, row_factors)
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=dev)], dim=1)
                step = torch.tensor(toks, device=dev)[:, None]
                logits = eng.model(input_ids=step, attention_mask=mask, position_ids=next_pos[:, None], past_key_values=kv,
                                   use_cache=True).logits[:, -1]
                next_pos = next_pos + 1
        finally:
            handle.remove()
            if eng.metrics:
                dt = time.perf_counter() - t0
                eng.metrics.tokens.inc(produced)
                if dt > 0:
                    eng.metrics.tokens_per_s.set(produced / dt)

    def _prefill(self, jobs: list[Job]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Left-padded prompts of `jobs` through the model (hooks already set): last logits, KV cache, mask, next positions."""
        from transformers import DynamicCache

        eng, dev, n = self.engine, self.engine.device, len(jobs)
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((n, width), eng.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, j in enumerate(jobs):
            ids[i, width - len(j.prompt_ids):] = torch.tensor(j.prompt_ids, dtype=torch.long)
            mask[i, width - len(j.prompt_ids):] = 1
            j.started = time.perf_counter()
            j.batch_size = max(j.batch_size, n)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kv = DynamicCache()
        logits = eng.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv, use_cache=True).logits[:, -1]
        return logits, kv, mask, pos[:, -1] + 1

    def _hooks(self, jobs: list[Job], active: list[int], apply_factors: Any, row_factors: Any) -> Any:
        from t2lcli.engine.lora_hooks import HookHandle

        rows = [jobs[i].entry for i in active]
        if all(e is None for e in rows):
            return HookHandle()
        if all(e is rows[0] for e in rows):  # one adapter for the whole batch: plain 2-D factors, no per-row product
            assert rows[0] is not None
            return apply_factors(self.engine.model, rows[0].factors, rows[0].scaling)
        factors = row_factors([e.factors if e is not None else None for e in rows])
        scale = torch.tensor([e.scaling if e is not None else 0.0 for e in rows], dtype=torch.float32, device=self.engine.device)
        return apply_factors(self.engine.model, factors, scale)

    def _rng(self, job: Job) -> torch.Generator | None:
        if job.temperature < 1e-4:  # greedy (a temperature this small would overflow the softmax anyway)
            return None
        g = torch.Generator(device=self.engine.device)
        g.manual_seed(job.seed if job.seed is not None else secrets.randbits(63))
        return g

    @staticmethod
    def _pick(logits: torch.Tensor, job: Job, gen: torch.Generator | None) -> int:
        if gen is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / job.temperature, dim=-1)
        if job.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            drop = (sp.cumsum(-1) - sp) > job.top_p
            sp[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, si, sp)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _advance(self, job: Job, tok: int, context_full: bool) -> bool:
        """Add one token to a row; emit new text; True when the row is finished."""
        eng = self.engine
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return True
        if tok in eng.eos_ids:
            self._finish(job, "stop")
            return True
        job.generated.append(tok)
        text = eng.decode(job.generated)
        hit = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if hit >= 0:
            job.text = text[:hit]
            self._finish(job, "stop")
            return True
        job.text = text
        if len(job.generated) >= job.max_tokens or context_full:
            self._finish(job, "length")
            return True
        hold = max((len(s) - 1 for s in job.stop), default=0)  # a stop string may be starting at the end
        upto = len(text) - hold
        while upto > job.sent and text[upto - 1] == "\ufffd":  # an incomplete UTF-8 sequence: wait for its rest
            upto -= 1
        if upto > job.sent:
            job.sink({"type": "delta", "text": text[job.sent:upto]})
            job.sent = upto
        return False

    def _finish(self, job: Job, reason: str) -> None:
        if len(job.text) > job.sent:
            job.sink({"type": "delta", "text": job.text[job.sent:]})
            job.sent = len(job.text)
        job.sink({"type": "done", "finish_reason": reason, "completion_tokens": len(job.generated),
                  "prompt_tokens": len(job.prompt_ids), "batch_size": job.batch_size,
                  "queue_ms": round((job.started - job.submitted) * 1000, 3),
                  "decode_ms": round((time.perf_counter() - job.started) * 1000, 3)})
