"""The ASGI middleware around `t2l serve`'s routes (outermost first): access log + metrics, bearer auth, body limit."""

from __future__ import annotations

import hmac
import json
import sys
import time
from typing import Any

from t2lcli.engine.serve.http_errors import error_body
from t2lcli.engine.serve.metrics import Metrics

MAX_BODY_BYTES = 1 << 20
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/adapters", "/health", "/metrics", "/")


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/adapters/"):
        return "/v1/adapters/{id}/download" if path.endswith("/download") else "/v1/adapters/{id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


def printable(s: str, limit: int = 200) -> str:
    return "".join(c if c.isprintable() and c != '"' else "?" for c in s[:limit])


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
        sys.stderr.write(f'{client[0]} "{scope.get("method", "")} {printable(path)}" {status} '
                         f"{(time.perf_counter() - t0) * 1000:.1f}ms{failure}\n")
        sys.stderr.flush()


async def send_json(send: Any, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
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
                await send_json(send, 401, error_body(msg, "authentication_error", "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
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
                    await send_json(send, 400, error_body("bad Content-Length header", "invalid_request_error", "invalid_request"))
                    return
                if n > self.limit:
                    await send_json(send, 413, too_big)
                    return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await send_json(send, 413, too_big)
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
