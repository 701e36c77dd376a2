"""The HTTP side of `t2l serve`: FastAPI routes, OpenAI-style errors, auth, body limit, access log and metrics.

See the package docstring (`t2lcli.engine.serve`) for the route contract.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import re
import secrets
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from t2lcli.descriptions import description_problem, slugify, valid_text
from t2lcli.engine.serve.cache import CacheEntry
from t2lcli.engine.serve.engine import AdapterServing, Job, QueueFull
from t2lcli.engine.serve.metrics import Metrics
from t2lcli.engine.serve.schemas import MAX_STOP, MAX_STOP_CHARS, AdapterRequest, ChatCompletionRequest, CompletionRequest, _Sampling
from t2lcli.errors import T2LError

MAX_BODY_BYTES = 1 << 20
STATIC = Path(__file__).parent / "static"
_ID = re.compile(r"^[0-9a-f]{12,64}$")  # an adapter id (64 hex digits) or a unique prefix of one
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/adapters", "/health", "/metrics", "/")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param, self.headers = status, message, code, type_, param, headers


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_response(status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def description_error(text: str) -> str | None:
    """Why `text` cannot be a description: generate's one rule (t2lcli.text)."""
    return description_problem(text)


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/adapters/"):
        return "/v1/adapters/{id}/download" if path.endswith("/download") else "/v1/adapters/{id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


def _printable(s: str, limit: int = 200) -> str:
    return "".join(c if c.isprintable() and c != '"' else "?" for c in s[:limit])


# ---- ASGI middleware (outermost first: access log + metrics, auth, body limit) ----------------------------------------


class AccessLog:
    """One line per request on stderr, request counters, and the last line of defence: an exception that escapes the
    app becomes an OpenAI-style 500 and one log line, never a traceback."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 0}

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        failure = ""
        try:
            await self.app(scope, receive, send_wrapped)
        except Exception as exc:
            failure = f" error={type(exc).__name__}"
            if not state["status"]:
                body = json.dumps(error_body("internal error", "server_error", "internal_error")).encode()
                await send_wrapped({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        status = state["status"] or 499  # 499: the client went away before an answer
        path = scope.get("path", "")
        self.metrics.requests.labels(route_label(path), scope.get("method", ""), str(status)).inc()
        client = scope.get("client") or ("-", 0)
        sys.stderr.write(f'{client[0]} "{scope.get("method", "")} {_printable(path)}" {status} '
                         f"{(time.perf_counter() - t0) * 1000:.1f}ms{failure}\n")
        sys.stderr.flush()


async def _send_json(send: Any, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """`Authorization: Bearer KEY` on every /v1 route (constant-time compare)."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key is not None and scope["type"] == "http" and scope.get("path", "").startswith("/v1"):
            given = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    given = v
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                msg = "missing API key: send Authorization: Bearer KEY" if not given else "invalid API key"
                await _send_json(send, 401, error_body(msg, "authentication_error", "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the request body up front (at most `limit` bytes; more is a 413) and replays it to the app; a POST body is
    read as JSON whatever its declared content type (`curl -d` sends form-encoded)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error_body(f"request body is larger than {self.limit} bytes", "invalid_request_error", "request_too_large")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    await _send_json(send, 400, error_body("bad Content-Length header", "invalid_request_error", "invalid_request"))
                    return
                if n > self.limit:
                    await _send_json(send, 413, too_big)
                    return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await _send_json(send, 413, too_big)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        if scope.get("method") == "POST":  # every POST route takes JSON: read it as JSON whatever the client declared
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---- the app -----------------------------------------------------------------------------------------------------------


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        return f"request body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(e.get("msg", "invalid value"))
    if e.get("type") == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def create_app(engine: AdapterServing, api_key: str | None = None, metrics: Metrics | None = None) -> Any:
    """The ASGI app (FastAPI routes inside the access-log, auth and body-limit middleware)."""
    metrics = metrics or engine.metrics or Metrics()
    if engine.metrics is None:
        engine.metrics = metrics
    started = int(time.time())
    base = engine.base_name

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="t2l serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan, redirect_slashes=False)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.code, exc.type, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return _error_response(400, msg, "invalid_json" if msg.startswith("request body is not valid JSON") else "invalid_value", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = {400: "request body could not be parsed as JSON", 404: "no such route",
               405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return _error_response(exc.status_code, msg, code)

    @app.exception_handler(RecursionError)
    async def _deep(_r: Request, _exc: RecursionError) -> JSONResponse:
        return _error_response(400, "request body is nested too deeply", "invalid_json")

    @app.exception_handler(T2LError)
    async def _t2l(_r: Request, exc: T2LError) -> JSONResponse:
        return _error_response(400, exc.message + (f" ({exc.hint})" if exc.hint else ""), "invalid_value")

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:  # then re-raised by Starlette; AccessLog logs one line
        return _error_response(500, "internal error", "internal_error", "server_error")

    # ---- adapters ----

    async def get_adapter(description: str, scale: float, scaling: str, name: str | None, param: str) -> tuple[CacheEntry, bool]:
        """The cached or new adapter for a description, acquired for the caller (release it); (entry, generated now)."""
        if not isinstance(description, str):
            raise ApiError(400, "description must be a string", "invalid_value", param=param)
        problem = description_error(description)
        if problem:
            raise ApiError(400, problem, "invalid_description", param=param)
        description = valid_text(description)
        key = engine.request_key(description, scale, scaling)
        fut, owner = engine.cache.claim(key)
        if owner:
            metrics.cache_misses.inc()

            def produce() -> None:
                try:
                    engine.cache.fulfil(engine.make_adapter(description, scale, scaling, name), key)
                except BaseException as exc:
                    engine.cache.fail(key, exc)

            asyncio.get_running_loop().run_in_executor(None, produce)  # independent of this request's lifetime
        else:
            metrics.cache_hits.inc()
        try:
            entry = await asyncio.shield(asyncio.wrap_future(fut))
        except T2LError as exc:
            raise ApiError(400, exc.message, "invalid_value", param=param) from None
        engine.cache.acquire(entry)
        if name and not entry.info.get("name"):
            entry.info["name"] = name
        return entry, owner

    def adapter_json(entry: CacheEntry, generated: bool | None = None) -> dict[str, Any]:
        out = {"id": entry.id, "object": "adapter", "model": f"t2l:{entry.id}", "parent": base, **entry.info, "bytes": entry.nbytes}
        if generated is not None:
            out["cached"] = not generated
        return out

    def cached_entry(adapter_id: str) -> CacheEntry:
        entry = engine.cache.get(adapter_id) if _ID.match(adapter_id) else None
        if entry is None:
            raise ApiError(404, f"no cached adapter '{_printable(adapter_id, 80)}'; create it with POST /v1/adapters "
                                "(or send the description in the request's t2l field)", "adapter_not_found")
        return entry

    @app.post("/v1/adapters")
    async def create_adapters(body: AdapterRequest) -> Any:
        if (body.description is None) == (body.descriptions is None):
            raise ApiError(400, "give exactly one of description or descriptions", "invalid_value")
        if body.descriptions is not None:
            out = []
            for i, d in enumerate(body.descriptions):
                entry, generated = await get_adapter(d, body.scale, body.scaling, None, f"descriptions.{i}")
                engine.cache.release(entry)
                out.append(adapter_json(entry, generated))
            return {"object": "list", "data": out}
        entry, generated = await get_adapter(body.description or "", body.scale, body.scaling, body.name, "description")
        engine.cache.release(entry)
        return adapter_json(entry, generated)

    @app.get("/v1/adapters")
    async def list_adapters() -> Any:
        return {"object": "list", "data": [adapter_json(e) for e in reversed(engine.cache.entries())]}

    @app.get("/v1/adapters/{adapter_id}")
    async def show_adapter(adapter_id: str) -> Any:
        from t2lcli.engine.adapters import model_card

        entry = cached_entry(adapter_id)
        return {**adapter_json(entry), "config": entry.adapter.config, "metadata": entry.adapter.meta, "card": model_card(entry.adapter)}

    @app.get("/v1/adapters/{adapter_id}/download")
    async def download_adapter(adapter_id: str) -> Response:
        entry = cached_entry(adapter_id)
        folder = slugify(entry.info.get("name") or "", f"t2l-{entry.id[:12]}")
        data = await asyncio.to_thread(_zip_adapter, entry, folder)
        return Response(data, media_type="application/zip", headers={"content-disposition": f'attachment; filename="{folder}.zip"'})

    @app.delete("/v1/adapters/{adapter_id}")
    async def delete_adapter(adapter_id: str) -> Any:
        entry = cached_entry(adapter_id)
        engine.cache.delete(entry.id)
        return {"id": entry.id, "object": "adapter", "deleted": True}

    # ---- OpenAI routes ----

    @app.get("/v1/models")
    async def list_models() -> Any:
        data = [{"id": base, "object": "model", "created": started, "owned_by": "t2l", "root": base, "parent": None,
                 "max_model_len": engine.context}]
        for e in reversed(engine.cache.entries()):
            data.append({"id": f"t2l:{e.id}", "object": "model", "created": e.info.get("created", started), "owned_by": "t2l",
                         "root": f"t2l:{e.id}", "parent": base, "description": e.info.get("description")})
        return {"object": "list", "data": data}

    async def resolve(body: _Sampling) -> tuple[CacheEntry | None, bool]:
        ext = body.t2l
        wants = ext is not None and ext.description is not None
        if body.model.startswith("t2l:"):
            if wants:
                raise ApiError(400, "give either model 't2l:<id>' or t2l.description, not both", "invalid_value", param="model")
            entry = cached_entry(body.model[4:])
            engine.cache.acquire(entry)
            metrics.cache_hits.inc()
            return entry, False
        if body.model != base:
            raise ApiError(404, f"model '{_printable(body.model, 80)}' is not served here; GET /v1/models lists them "
                                f"('{base}', or 't2l:<adapter id>')", "model_not_found", param="model")
        if wants:
            assert ext is not None and ext.description is not None
            return await get_adapter(ext.description, ext.scale, ext.scaling, ext.name, "t2l.description")
        return None, False

    def sampling(body: _Sampling, max_tokens: int | None, n_prompt: int) -> dict[str, Any]:
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

    def check_queue() -> None:
        if engine.scheduler.waiting >= engine.settings.queue_size:
            raise ApiError(503, f"the server is busy ({engine.scheduler.waiting} requests waiting); retry shortly", "queue_full",
                           "server_busy", headers={"retry-after": "1"})

    async def complete(request: Request, body: _Sampling, prompt_ids: list[int], max_tokens: int | None, chat: bool) -> Any:
        params = sampling(body, max_tokens, len(prompt_ids))
        check_queue()
        entry, generated = await resolve(body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        release = _releaser(engine, entry)

        def sink(ev: dict[str, Any]) -> None:
            if ev["type"] != "delta":  # the row is done with its adapter, whether or not anyone still listens
                release()
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(prompt_ids, params["max_tokens"], sink, params["temperature"], params["top_p"], params["stop"], params["seed"], entry)
        try:
            engine.submit(job)
        except QueueFull as exc:
            release()
            raise ApiError(503, f"the server is busy: {exc}; retry shortly", "queue_full", "server_busy", headers={"retry-after": "1"})
        t2l = {"adapter_id": entry.id if entry else None, "cached": (not generated) if entry else None,
               "generate_ms": entry.info["generate_ms"] if generated and entry else 0.0}
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        model = f"t2l:{entry.id}" if entry else base
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(job, events, entry, rid, model, created, chat, t2l, include_usage),
                                     media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        parts: list[str] = []
        checked = time.perf_counter()
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    ev = {"type": "wait"}
                if time.perf_counter() - checked >= 0.25:  # also while tokens stream in: the client may be gone
                    checked = time.perf_counter()
                    if await request.is_disconnected():
                        job.cancelled.set()
                        return Response(status_code=499)
                if ev["type"] == "wait":
                    continue
                if ev["type"] == "delta":
                    parts.append(ev["text"])
                elif ev["type"] == "error":
                    raise ApiError(503 if ev.get("code") == "shutting_down" else 500, ev["message"], ev.get("code", "generation_failed"),
                                   "server_error")
                else:
                    break
        finally:
            job.cancelled.set()  # no-op when finished; stops the row if this task was cancelled
        text = "".join(parts)
        usage = _usage(ev)
        t2l.update(_timing(ev))
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _reason(ev)}
                                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": _reason(ev)})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
                "choices": [choice], "usage": usage, "t2l": t2l}

    async def _stream(job: Job, events: asyncio.Queue, entry: CacheEntry | None, rid: str, model: str, created: int, chat: bool,
                      t2l: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
                                          "t2l": t2l}, ensure_ascii=False) + "\n\n"

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
                    t2l.update(_timing(ev))
                    yield chunk(None if chat else "", _reason(ev))
                    if include_usage:
                        yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                                                     "usage": _usage(ev), "t2l": t2l}) + "\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client went away (or we are done): stop decoding this row

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        messages = [{"role": m.role, "content": valid_text(m.text())} for m in body.messages]  # lone surrogates -> U+FFFD
        ids = await asyncio.to_thread(engine.chat_ids, messages)
        mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await complete(request, body, ids, mt, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "prompt must be one string (batches of prompts are not supported)", "invalid_value", param="prompt")
            prompt = prompt[0]
        ids = await asyncio.to_thread(engine.text_ids, valid_text(prompt))
        if not ids:
            raise ApiError(400, "prompt is empty", "invalid_value", param="prompt")
        return await complete(request, body, ids, body.max_tokens, chat=False)

    # ---- health, metrics, page ----

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": base, "adapters": len(engine.cache), "queue": engine.scheduler.waiting,
                "max_batch": engine.settings.max_batch}

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.cached.set(len(engine.cache))
        metrics.cached_bytes.set(engine.cache.nbytes)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/")
    async def index() -> Any:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<!doctype html><title>t2l serve</title><p>t2l serve is running: POST /v1/chat/completions.</p>")

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return AccessLog(BearerAuth(BodyLimit(app), api_key), metrics)


def _releaser(engine: AdapterServing, entry: CacheEntry | None) -> Any:
    """Release `entry` once, from whichever side finishes first (the scheduler thread or the request)."""
    import threading

    lock, state = threading.Lock(), {"done": entry is None}

    def release() -> None:
        with lock:
            if state["done"]:
                return
            state["done"] = True
        engine.cache.release(entry)  # type: ignore[arg-type]

    return release


def _reason(ev: dict[str, Any]) -> str:
    r = ev.get("finish_reason", "stop")
    return r if r in ("stop", "length") else "stop"


def _usage(ev: dict[str, Any]) -> dict[str, int]:
    p, c = int(ev.get("prompt_tokens", 0)), int(ev.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _timing(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("batch_size", "queue_ms", "decode_ms") if k in ev}


def _zip_adapter(entry: CacheEntry, folder: str) -> bytes:
    """The PEFT folder `t2l generate` writes for this adapter (same writer, float32), zipped."""
    import tempfile

    import torch

    from t2lcli.engine.adapters import save_adapter

    with tempfile.TemporaryDirectory(prefix="t2l-serve-") as tmp:
        out = save_adapter(entry.adapter, Path(tmp) / folder, dtype=torch.float32)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(out.iterdir()):
                zf.write(f, f"{folder}/{f.name}")
        return buf.getvalue()
