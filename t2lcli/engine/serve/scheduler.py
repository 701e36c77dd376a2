"""The hf backend's scheduler: a thread that decodes queued requests together in one batch, each row with its own
LoRA (or none), and lets new requests join a running batch (continuous batching). See `engine` for the contract."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from t2lcli.engine.serve.jobs import Job, QueueFull


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


@dataclass
class _Batch:
    """The running batch: every job it has taken (`active` indexes the rows still decoding) and the model's state."""

    jobs: list[Job]
    gens: list[torch.Generator | None]
    active: list[int]
    handle: Any = None
    logits: Any = None
    kv: Any = None
    mask: Any = None
    next_pos: Any = None
    produced: int = 0


class Scheduler:
    """A thread that forms batches from the queue and decodes them."""

    def __init__(self, engine: Any) -> None:  # the hf `ServeEngine` (serve.engine imports this module)
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
        eng = self.engine
        if eng.metrics:
            eng.metrics.batch_size.observe(len(jobs))
        b = _Batch(jobs, [self._rng(j) for j in jobs], list(range(len(jobs))))
        b.handle = self._hooks(jobs, b.active)
        t0 = time.perf_counter()
        try:
            b.logits, b.kv, b.mask, b.next_pos = self._prefill(jobs)
            while True:
                if len(b.active) < eng.settings.max_batch and not self.q.empty() and _joinable(b.kv):
                    self._join(b)
                keep, toks = self._pick_all(b)
                if not keep or self._stop.is_set():
                    for row, ji in enumerate(b.active):
                        if row in keep:
                            self._finish(jobs[ji], "shutdown")
                    break
                self._step(b, keep, toks)
        finally:
            b.handle.remove()
            if eng.metrics:
                dt = time.perf_counter() - t0
                eng.metrics.tokens.inc(b.produced)
                if dt > 0:
                    eng.metrics.tokens_per_s.set(b.produced / dt)

    def _join(self, b: _Batch) -> None:
        """Continuous batching: requests that arrived meanwhile are prefilled and their KV rows merged into the batch."""
        eng = self.engine
        new = [j for j in self._take(eng.settings.max_batch - len(b.active), wait=False) if not self._drop_cancelled(j)]
        if not new:
            return
        b.handle.remove()
        first = len(b.jobs)
        b.jobs.extend(new)
        b.gens.extend(self._rng(j) for j in new)
        b.handle = self._hooks(b.jobs, list(range(first, len(b.jobs))))
        logits2, kv2, mask2, pos2 = self._prefill(new)
        b.handle.remove()
        b.mask = _merge_rows(b.kv, kv2, b.mask, mask2)
        b.logits, b.next_pos = torch.cat([b.logits, logits2]), torch.cat([b.next_pos, pos2])
        b.active += list(range(first, len(b.jobs)))
        for ji in b.active:
            b.jobs[ji].batch_size = max(b.jobs[ji].batch_size, len(b.active))
        if eng.metrics:
            eng.metrics.batch_size.observe(len(b.active))
        b.handle = self._hooks(b.jobs, b.active)

    def _pick_all(self, b: _Batch) -> tuple[list[int], list[int]]:
        """One token for every active row; (rows that go on, their tokens)."""
        keep, toks = [], []
        for row, ji in enumerate(b.active):
            j = b.jobs[ji]
            tok = self._pick(b.logits[row], j, b.gens[ji])
            b.produced += 1
            if self._advance(j, tok, len(j.prompt_ids) + len(j.generated) + 1 >= self.engine.context):
                continue
            keep.append(row)
            toks.append(tok)
        return keep, toks

    def _step(self, b: _Batch, keep: list[int], toks: list[int]) -> None:
        """Drop finished rows, then one decode step of the model for the rest."""
        eng, dev = self.engine, self.engine.device
        if len(keep) < len(b.active):
            idx = torch.tensor(keep, device=dev)
            _select_rows(b.kv, idx)
            b.mask, b.next_pos = b.mask[idx], b.next_pos[idx]
            b.active = [b.active[r] for r in keep]
            b.handle.remove()
            b.handle = self._hooks(b.jobs, b.active)
        b.mask = torch.cat([b.mask, torch.ones((len(b.active), 1), dtype=b.mask.dtype, device=dev)], dim=1)
        step = torch.tensor(toks, device=dev)[:, None]
        b.logits = eng.model(input_ids=step, attention_mask=b.mask, position_ids=b.next_pos[:, None], past_key_values=b.kv,
                             use_cache=True).logits[:, -1]
        b.next_pos = b.next_pos + 1

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

    def _hooks(self, jobs: list[Job], active: list[int]) -> Any:
        """The LoRA forward hooks for these rows: none, one adapter for all, or per-row factors."""
        from t2lcli.engine.lora_hooks import HookHandle, apply_factors, row_factors

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
