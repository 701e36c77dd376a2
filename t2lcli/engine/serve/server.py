"""Run the app under uvicorn: bind, report the URL once listening, shut down cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from t2lcli.errors import InputError

GRACEFUL_S = 10  # on Ctrl-C, in-flight requests get this long to finish; the rest get a clean error


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, on_ready: Callable[[str], None] | None = None) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready(url_of(self, host))

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, server_header=False, ws="none",
                            lifespan="on", timeout_graceful_shutdown=GRACEFUL_S, timeout_keep_alive=5)
    return Server(config)


def url_of(server: Any, host: str) -> str:
    port = None
    for s in getattr(server, "servers", []):
        for sock in getattr(s, "sockets", []):
            port = sock.getsockname()[1]
            break
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port if port is not None else server.config.port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (so a busy port is one clear error, and tests can use port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port, or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
