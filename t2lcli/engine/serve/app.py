"""The HTTP side of `t2l serve`: the FastAPI app — routes, OpenAI-style errors, auth, body limit, access log, metrics.

The routes live in `adapter_routes` (/v1/adapters) and `completion_routes` (/v1/chat/completions, /v1/completions),
the errors in `http_errors`, the ASGI middleware in `middleware`; this module puts them together. See the package
docstring (`t2lcli.engine.serve`) for the route contract.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

from t2lcli.engine.serve.adapter_routes import Adapters
from t2lcli.engine.serve.completion_routes import Completions
from t2lcli.engine.serve.engine import AdapterServing
from t2lcli.engine.serve.http_errors import ApiError, error_body, install_handlers
from t2lcli.engine.serve.metrics import Metrics
from t2lcli.engine.serve.middleware import MAX_BODY_BYTES, ROUTES, AccessLog, BearerAuth, BodyLimit, route_label

STATIC = Path(__file__).parent / "static"

__all__ = ["MAX_BODY_BYTES", "ROUTES", "STATIC", "ApiError", "create_app", "error_body", "route_label"]


def create_app(engine: AdapterServing, api_key: str | None = None, metrics: Metrics | None = None) -> Any:
    """The ASGI app (FastAPI routes inside the access-log, auth and body-limit middleware)."""
    metrics = metrics or engine.metrics or Metrics()
    if engine.metrics is None:
        engine.metrics = metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="t2l serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan, redirect_slashes=False)
    install_handlers(app)
    adapters = Adapters(engine, metrics)
    adapters.register(app)
    Completions(engine, adapters).register(app)
    _register_info(app, engine, metrics)
    return AccessLog(BearerAuth(BodyLimit(app), api_key), metrics)


def _register_info(app: FastAPI, engine: AdapterServing, metrics: Metrics) -> None:
    """/v1/models, /health, /metrics and the web page."""
    started = int(time.time())
    base = engine.base_name

    @app.get("/v1/models")
    async def list_models() -> Any:
        data = [{"id": base, "object": "model", "created": started, "owned_by": "t2l", "root": base, "parent": None,
                 "max_model_len": engine.context}]
        for e in reversed(engine.cache.entries()):
            data.append({"id": f"t2l:{e.id}", "object": "model", "created": e.info.get("created", started), "owned_by": "t2l",
                         "root": f"t2l:{e.id}", "parent": base, "description": e.info.get("description")})
        return {"object": "list", "data": data}

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
