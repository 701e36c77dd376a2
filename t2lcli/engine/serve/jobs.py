"""The data every serving backend shares: its settings, a request as the scheduler sees it (`Job`), and `QueueFull`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from t2lcli.engine.serve.cache import CacheEntry

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
