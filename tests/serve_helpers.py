"""A real `t2l serve` (uvicorn on 127.0.0.1, a free port, in a thread) around a tiny engine, for the serve tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any


def tiny_engine(checkpoint_dir: Path, **settings: Any) -> Any:
    from t2lcli.engine.serve.engine import ServeEngine, ServeSettings
    from t2lcli.engine.serve.metrics import Metrics
    from t2lcli.hw_profiles import Profile

    return ServeEngine.load(str(checkpoint_dir), None, Profile(), ServeSettings(**settings), Metrics())


class LiveServer:
    def __init__(self, engine: Any, api_key: str | None = None) -> None:
        from t2lcli.engine.serve.app import create_app
        from t2lcli.engine.serve.server import bind, make_server

        self.engine = engine
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(create_app(engine, api_key), "127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    @property
    def base(self) -> str:
        return self.engine.base_name

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
