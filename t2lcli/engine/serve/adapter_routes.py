"""The adapter side of `t2l serve`: a description to a cached adapter (shared by /v1/adapters and the completion
routes' `t2l.description`), and the /v1/adapters routes that create, list, show, download and delete them."""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response

from t2lcli.descriptions import description_problem, slugify, valid_text
from t2lcli.engine.serve.cache import CacheEntry
from t2lcli.engine.serve.engine import AdapterServing
from t2lcli.engine.serve.http_errors import ApiError
from t2lcli.engine.serve.metrics import Metrics
from t2lcli.engine.serve.middleware import printable
from t2lcli.engine.serve.schemas import AdapterRequest
from t2lcli.errors import T2LError

_ID = re.compile(r"^[0-9a-f]{12,64}$")  # an adapter id (64 hex digits) or a unique prefix of one


class Adapters:
    """Adapters by description or id, for the routes of one app (the engine's cache is the only state)."""

    def __init__(self, engine: AdapterServing, metrics: Metrics) -> None:
        self.engine, self.metrics, self.base = engine, metrics, engine.base_name

    async def get(self, description: str, scale: float, scaling: str, name: str | None, param: str) -> tuple[CacheEntry, bool]:
        """The cached or new adapter for a description, acquired for the caller (release it); (entry, generated now).
        Concurrent requests for one description share one generation, which runs to the end even if they go away."""
        engine = self.engine
        if not isinstance(description, str):
            raise ApiError(400, "description must be a string", "invalid_value", param=param)
        problem = description_problem(description)  # generate's one rule
        if problem:
            raise ApiError(400, problem, "invalid_description", param=param)
        description = valid_text(description)
        key = engine.request_key(description, scale, scaling)
        fut, owner = engine.cache.claim(key)
        if owner:
            self.metrics.cache_misses.inc()

            def produce() -> None:
                try:
                    engine.cache.fulfil(engine.make_adapter(description, scale, scaling, name), key)
                except BaseException as exc:
                    engine.cache.fail(key, exc)

            asyncio.get_running_loop().run_in_executor(None, produce)  # independent of this request's lifetime
        else:
            self.metrics.cache_hits.inc()
        try:
            entry = await asyncio.shield(asyncio.wrap_future(fut))
        except T2LError as exc:
            raise ApiError(400, exc.message, "invalid_value", param=param) from None
        engine.cache.acquire(entry)
        if name and not entry.info.get("name"):
            entry.info["name"] = name
        return entry, owner

    def cached(self, adapter_id: str) -> CacheEntry:
        """The cached adapter with this id (or unique prefix), else a 404."""
        entry = self.engine.cache.get(adapter_id) if _ID.match(adapter_id) else None
        if entry is None:
            raise ApiError(404, f"no cached adapter '{printable(adapter_id, 80)}'; create it with POST /v1/adapters "
                                "(or send the description in the request's t2l field)", "adapter_not_found")
        return entry

    def to_json(self, entry: CacheEntry, generated: bool | None = None) -> dict[str, Any]:
        out = {"id": entry.id, "object": "adapter", "model": f"t2l:{entry.id}", "parent": self.base, **entry.info, "bytes": entry.nbytes}
        if generated is not None:
            out["cached"] = not generated
        return out

    # ---- routes ----

    async def create(self, body: AdapterRequest) -> Any:
        if (body.description is None) == (body.descriptions is None):
            raise ApiError(400, "give exactly one of description or descriptions", "invalid_value")
        if body.descriptions is not None:
            out = []
            for i, d in enumerate(body.descriptions):
                entry, generated = await self.get(d, body.scale, body.scaling, None, f"descriptions.{i}")
                self.engine.cache.release(entry)
                out.append(self.to_json(entry, generated))
            return {"object": "list", "data": out}
        entry, generated = await self.get(body.description or "", body.scale, body.scaling, body.name, "description")
        self.engine.cache.release(entry)
        return self.to_json(entry, generated)

    async def list_all(self) -> Any:
        return {"object": "list", "data": [self.to_json(e) for e in reversed(self.engine.cache.entries())]}

    async def show(self, adapter_id: str) -> Any:
        from t2lcli.engine.adapters import model_card

        entry = self.cached(adapter_id)
        return {**self.to_json(entry), "config": entry.adapter.config, "metadata": entry.adapter.meta, "card": model_card(entry.adapter)}

    async def download(self, adapter_id: str) -> Response:
        entry = self.cached(adapter_id)
        folder = slugify(entry.info.get("name") or "", f"t2l-{entry.id[:12]}")
        data = await asyncio.to_thread(zip_adapter, entry, folder)
        return Response(data, media_type="application/zip", headers={"content-disposition": f'attachment; filename="{folder}.zip"'})

    async def delete(self, adapter_id: str) -> Any:
        entry = self.cached(adapter_id)
        self.engine.cache.delete(entry.id)
        return {"id": entry.id, "object": "adapter", "deleted": True}

    def register(self, app: FastAPI) -> None:
        app.post("/v1/adapters")(self.create)
        app.get("/v1/adapters")(self.list_all)
        app.get("/v1/adapters/{adapter_id}")(self.show)
        app.get("/v1/adapters/{adapter_id}/download")(self.download)
        app.delete("/v1/adapters/{adapter_id}")(self.delete)


def zip_adapter(entry: CacheEntry, folder: str) -> bytes:
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
