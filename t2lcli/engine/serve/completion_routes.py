"""The OpenAI completion routes of `t2l serve` (/v1/chat/completions, /v1/completions): which adapter answers, the
sampling parameters, the job on the engine's batch, and the answer as one JSON object or an event stream."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from t2lcli.descriptions import valid_text
from t2lcli.engine.serve.adapter_routes import Adapters
from t2lcli.engine.serve.cache import CacheEntry
from t2lcli.engine.serve.engine import AdapterServing, Job, QueueFull
from t2lcli.engine.serve.http_errors import ApiError, error_body
from t2lcli.engine.serve.middleware import printable
from t2lcli.engine.serve.schemas import MAX_STOP, MAX_STOP_CHARS, ChatCompletionRequest, CompletionRequest, _Sampling

POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


class Completions:
    def __init__(self, engine: AdapterServing, adapters: Adapters) -> None:
        self.engine, self.adapters, self.base = engine, adapters, engine.base_name

    async def resolve(self, body: _Sampling) -> tuple[CacheEntry | None, bool]:
        """The adapter that answers (acquired; None for the base model) and whether it was generated for this request."""
        ext = body.t2l
        wants = ext is not None and ext.description is not None
        if body.model.startswith("t2l:"):
            if wants:
                raise ApiError(400, "give either model 't2l:<id>' or t2l.description, not both", "invalid_value", param="model")
            entry = self.adapters.cached(body.model[4:])
            self.engine.cache.acquire(entry)
            self.adapters.metrics.cache_hits.inc()
            return entry, False
        if body.model != self.base:
            raise ApiError(404, f"model '{printable(body.model, 80)}' is not served here; GET /v1/models lists them "
                                f"('{self.base}', or 't2l:<adapter id>')", "model_not_found", param="model")
        if wants:
            assert ext is not None and ext.description is not None
            return await self.adapters.get(ext.description, ext.scale, ext.scaling, ext.name, "t2l.description")
        return None, False

    def sampling(self, body: _Sampling, max_tokens: int | None, n_prompt: int) -> dict[str, Any]:
        """The job's sampling parameters, each checked against the server's caps and the model's context."""
        engine = self.engine
        cap = engine.settings.max_tokens_cap
        if body.n != 1:
            raise ApiError(400, "only n=1 is supported", "invalid_value", param="n")
        if max_tokens is not None and max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "invalid_value", param="max_tokens")
        if max_tokens is not None and max_tokens > cap:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {cap} (--max-tokens-cap)", "invalid_value",
                           param="max_tokens")
        mt = max_tokens if max_tokens is not None else min(engine.settings.default_max_tokens, cap)
        if n_prompt + (max_tokens or 1) > engine.context:
            raise ApiError(400, f"the prompt is {n_prompt} tokens and max_tokens {max_tokens or 1}; the model's context is "
                                f"{engine.context} tokens", "context_length_exceeded", param="messages")
        mt = min(mt, engine.context - n_prompt)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise ApiError(400, f"stop takes at most {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} characters", "invalid_value",
                           param="stop")
        temperature = 1.0 if body.temperature is None else body.temperature
        return {"max_tokens": mt, "temperature": temperature, "top_p": 1.0 if body.top_p is None else body.top_p, "stop": stop,
                "seed": None if body.seed is None else body.seed % (1 << 63)}

    def check_queue(self) -> None:
        waiting = self.engine.scheduler.waiting
        if waiting >= self.engine.settings.queue_size:
            raise ApiError(503, f"the server is busy ({waiting} requests waiting); retry shortly", "queue_full",
                           "server_busy", headers={"retry-after": "1"})

    async def complete(self, request: Request, body: _Sampling, prompt_ids: list[int], max_tokens: int | None, chat: bool) -> Any:
        """Queue one row on the engine's batch and answer with it (streamed or whole)."""
        params = self.sampling(body, max_tokens, len(prompt_ids))
        self.check_queue()
        entry, generated = await self.resolve(body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        release = releaser(self.engine, entry)

        def sink(ev: dict[str, Any]) -> None:
            if ev["type"] != "delta":  # the row is done with its adapter, whether or not anyone still listens
                release()
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(prompt_ids, params["max_tokens"], sink, params["temperature"], params["top_p"], params["stop"], params["seed"], entry)
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            release()
            raise ApiError(503, f"the server is busy: {exc}; retry shortly", "queue_full", "server_busy", headers={"retry-after": "1"})
        t2l = {"adapter_id": entry.id if entry else None, "cached": (not generated) if entry else None,
               "generate_ms": entry.info["generate_ms"] if generated and entry else 0.0}
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12), "object": "", "created": int(time.time()),
                "model": f"t2l:{entry.id}" if entry else self.base}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, events, head, chat, t2l, include_usage), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        done = await collect(request, job, events)
        if done is None:
            return Response(status_code=499)
        text, ev = done
        t2l.update(timing(ev))
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason(ev)}
                                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": reason(ev)})
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": usage(ev),
                "t2l": t2l}

    async def chat_completions(self, request: Request, body: ChatCompletionRequest) -> Any:
        messages = [{"role": m.role, "content": valid_text(m.text())} for m in body.messages]  # lone surrogates -> U+FFFD
        ids = await asyncio.to_thread(self.engine.chat_ids, messages)
        mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await self.complete(request, body, ids, mt, chat=True)

    async def completions(self, request: Request, body: CompletionRequest) -> Any:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "prompt must be one string (batches of prompts are not supported)", "invalid_value", param="prompt")
            prompt = prompt[0]
        ids = await asyncio.to_thread(self.engine.text_ids, valid_text(prompt))
        if not ids:
            raise ApiError(400, "prompt is empty", "invalid_value", param="prompt")
        return await self.complete(request, body, ids, body.max_tokens, chat=False)

    def register(self, app: FastAPI) -> None:
        app.post("/v1/chat/completions")(self.chat_completions)
        app.post("/v1/completions")(self.completions)


async def collect(request: Request, job: Job, events: asyncio.Queue) -> tuple[str, dict[str, Any]] | None:
    """The whole answer of a non-streamed row and its final event; None when the client went away (the row stops)."""
    parts: list[str] = []
    checked = time.perf_counter()
    try:
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), timeout=POLL_S)
            except asyncio.TimeoutError:
                ev = {"type": "wait"}
            if time.perf_counter() - checked >= POLL_S:  # also while tokens stream in: the client may be gone
                checked = time.perf_counter()
                if await request.is_disconnected():
                    return None
            if ev["type"] == "wait":
                continue
            if ev["type"] == "delta":
                parts.append(ev["text"])
            elif ev["type"] == "error":
                raise ApiError(503 if ev.get("code") == "shutting_down" else 500, ev["message"], ev.get("code", "generation_failed"),
                               "server_error")
            else:
                return "".join(parts), ev
    finally:
        job.cancelled.set()  # no-op when finished; stops the row if the client left or this task was cancelled


async def stream(job: Job, events: asyncio.Queue, head: dict[str, Any], chat: bool, t2l: dict[str, Any],
                 include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of one row: OpenAI chunks, an optional usage chunk, then [DONE]."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return "data: " + json.dumps({**head, "object": obj, "choices": [choice], "t2l": t2l}, ensure_ascii=False) + "\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            ev = await events.get()
            if ev["type"] == "delta":
                yield chunk(ev["text"], None)
            elif ev["type"] == "error":
                yield "data: " + json.dumps(error_body(ev["message"], "server_error", ev.get("code", "generation_failed"))) + "\n\n"
                break
            else:
                t2l.update(timing(ev))
                yield chunk(None if chat else "", reason(ev))
                if include_usage:
                    yield "data: " + json.dumps({**head, "object": obj, "choices": [], "usage": usage(ev), "t2l": t2l}) + "\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (or we are done): stop decoding this row


def releaser(engine: AdapterServing, entry: CacheEntry | None) -> Callable[[], None]:
    """Release `entry` once, from whichever side finishes first (the scheduler thread or the request)."""
    lock, state = threading.Lock(), {"done": entry is None}

    def release() -> None:
        with lock:
            if state["done"]:
                return
            state["done"] = True
        engine.cache.release(entry)  # type: ignore[arg-type]

    return release


def reason(ev: dict[str, Any]) -> str:
    r = ev.get("finish_reason", "stop")
    return r if r in ("stop", "length") else "stop"


def usage(ev: dict[str, Any]) -> dict[str, int]:
    p, c = int(ev.get("prompt_tokens", 0)), int(ev.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def timing(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("batch_size", "queue_ms", "decode_ms") if k in ev}
