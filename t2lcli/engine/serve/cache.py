"""The adapter cache of `t2l serve`: in memory, LRU, bounded by count and bytes, one generation per request key.

Entries are stored under their id, the content hash `t2l generate` reports (`sha256` of the safetensors file it would
write, `adapters.adapter_sha256`), so the same weights have the same id in `t2l generate`, `t2l serve` and the vLLM
resolver. Requests are matched by a key known before generation (checkpoint, description, scale, scaling): `claim(key)`
lets one caller generate and the others wait; `fulfil(entry, key)` files the entry under its id and remembers the key.

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
    id: str  # the content hash: 64 hex digits
    adapter: Any  # t2lcli.engine.adapters.Adapter (tensors on the CPU, for download)
    factors: dict[str, tuple[Any, Any]]  # module path -> (A [r, d_in], B [d_out, r]) on the base model's device
    scaling: float
    nbytes: int
    info: dict[str, Any] = field(default_factory=dict)  # name, description, scale, scaling, generate_ms, created
    in_use: int = 0
    path: Any = None  # the PEFT folder on disk, where the backend reads adapters from files (vLLM); else None


class AdapterCache:
    def __init__(self, max_items: int, max_bytes: int, on_evict: Callable[[CacheEntry], None] | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        self._lock = threading.Lock()
        self._items: OrderedDict[str, CacheEntry] = OrderedDict()
        self._pending: dict[str, Future[CacheEntry]] = {}
        self._keys: dict[str, str] = {}  # request key -> id
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, adapter_id: str) -> CacheEntry | None:
        """The entry whose id is `adapter_id` or starts with it (a unique prefix), marked most recently used; or None."""
        with self._lock:
            entry = self._items.get(adapter_id)
            if entry is None and len(adapter_id) < 64:
                hits = [e for i, e in self._items.items() if i.startswith(adapter_id)]
                entry = hits[0] if len(hits) == 1 else None
            if entry is not None:
                self._items.move_to_end(entry.id)
            return entry

    def claim(self, key: str) -> tuple[Future[CacheEntry], bool]:
        """A future for the entry of a request key, and whether the caller must make it (then `fulfil` or `fail` it).

        Concurrent claims of the same new key share one future, so the adapter is generated once.
        """
        with self._lock:
            fut: Future[CacheEntry] = Future()
            entry = self._items.get(self._keys.get(key, ""))
            if entry is not None:
                self._items.move_to_end(entry.id)
                self.hits += 1
                fut.set_result(entry)
                return fut, False
            pending = self._pending.get(key)
            if pending is not None:
                self.hits += 1
                return pending, False
            self.misses += 1
            self._pending[key] = fut
            return fut, True

    def fulfil(self, entry: CacheEntry, key: str | None = None) -> CacheEntry:
        """File `entry` under its id (and `key`); an entry with the same id already cached is kept and returned instead."""
        with self._lock:
            fut = self._pending.pop(key, None) if key is not None else None
            have = self._items.get(entry.id)
            if have is not None:  # another key (or a resubmission) made the same weights
                entry = have
            else:
                self._items[entry.id] = entry
                self.nbytes += entry.nbytes
            self._items.move_to_end(entry.id)
            if key is not None:
                self._keys[key] = entry.id
            evicted = self._evict_locked()
        if fut is not None and not fut.done():
            fut.set_result(entry)
        self._notify(evicted)
        return entry

    def fail(self, key: str, exc: BaseException) -> None:
        with self._lock:
            fut = self._pending.pop(key, None)
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
                self._forget_keys_locked([entry.id])
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
        self._forget_keys_locked([e.id for e in evicted])
        return evicted

    def _forget_keys_locked(self, ids: list[str]) -> None:
        if ids:
            gone = set(ids)
            for k in [k for k, i in self._keys.items() if i in gone]:
                del self._keys[k]

    def _notify(self, evicted: list[CacheEntry]) -> None:
        if self.on_evict:
            for e in evicted:
                self.on_evict(e)
