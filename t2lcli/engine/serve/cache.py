"""The adapter cache of `t2l serve`: in memory, LRU, bounded by count and bytes, one generation per new id.

An entry in use by a request (`acquire`/`release`) is never evicted; a request also holds its own reference to the
entry's tensors, so removing an entry (DELETE, eviction) cannot break a request that is decoding with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CacheEntry:
    id: str
    adapter: Any  # t2lcli.engine.adapters.Adapter (tensors on the CPU, for download)
    factors: dict[str, tuple[Any, Any]]  # module path -> (A [r, d_in], B [d_out, r]) on the base model's device
    scaling: float
    nbytes: int
    info: dict[str, Any] = field(default_factory=dict)  # name, description, scale, scaling, generate_ms, created
    in_use: int = 0


class AdapterCache:
    def __init__(self, max_items: int, max_bytes: int, on_evict: Callable[[CacheEntry], None] | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        self._lock = threading.Lock()
        self._items: OrderedDict[str, CacheEntry] = OrderedDict()
        self._pending: dict[str, Future[CacheEntry]] = {}
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, adapter_id: str) -> CacheEntry | None:
        """The cached entry (marked most recently used), or None."""
        with self._lock:
            entry = self._items.get(adapter_id)
            if entry is not None:
                self._items.move_to_end(adapter_id)
            return entry

    def claim(self, adapter_id: str) -> tuple[Future[CacheEntry], bool]:
        """A future for the entry, and whether the caller must make it (then `fulfil` or `fail` it).

        Concurrent claims of the same new id share one future, so the adapter is generated once.
        """
        with self._lock:
            fut: Future[CacheEntry] = Future()
            entry = self._items.get(adapter_id)
            if entry is not None:
                self._items.move_to_end(adapter_id)
                self.hits += 1
                fut.set_result(entry)
                return fut, False
            pending = self._pending.get(adapter_id)
            if pending is not None:
                self.hits += 1
                return pending, False
            self.misses += 1
            self._pending[adapter_id] = fut
            return fut, True

    def fulfil(self, entry: CacheEntry) -> None:
        with self._lock:
            fut = self._pending.pop(entry.id, None)
            self._items[entry.id] = entry
            self._items.move_to_end(entry.id)
            self.nbytes += entry.nbytes
            evicted = self._evict_locked()
        if fut is not None and not fut.done():
            fut.set_result(entry)
        self._notify(evicted)

    def fail(self, adapter_id: str, exc: BaseException) -> None:
        with self._lock:
            fut = self._pending.pop(adapter_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def acquire(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.in_use += 1

    def release(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.in_use = max(0, entry.in_use - 1)
            evicted = self._evict_locked()
        self._notify(evicted)

    def delete(self, adapter_id: str) -> CacheEntry | None:
        with self._lock:
            entry = self._items.pop(adapter_id, None)
            if entry is not None:
                self.nbytes -= entry.nbytes
            return entry

    def entries(self) -> list[CacheEntry]:
        """Most recently used last."""
        with self._lock:
            return list(self._items.values())

    def _evict_locked(self) -> list[CacheEntry]:
        evicted = []
        while len(self._items) > self.max_items or self.nbytes > self.max_bytes:
            victim = next((e for e in self._items.values() if e.in_use == 0), None)
            if victim is None:  # everything left is in use: over the bound until a request releases one
                break
            del self._items[victim.id]
            self.nbytes -= victim.nbytes
            self.evictions += 1
            evicted.append(victim)
        return evicted

    def _notify(self, evicted: list[CacheEntry]) -> None:
        if self.on_evict:
            for e in evicted:
                self.on_evict(e)
