"""Prometheus metrics of one server (its own registry, so several servers in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no `*_created` series next to every counter
        r = self.registry = CollectorRegistry()
        self.requests = Counter("t2l_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.cache_hits = Counter("t2l_adapter_cache_hits", "adapter requests answered from the cache (or a generation in progress)", registry=r)
        self.cache_misses = Counter("t2l_adapter_cache_misses", "adapter requests that generated a new adapter", registry=r)
        self.evictions = Counter("t2l_adapter_cache_evictions", "adapters evicted from the cache (LRU)", registry=r)
        self.cached = Gauge("t2l_adapter_cache_size", "adapters in the cache", registry=r)
        self.cached_bytes = Gauge("t2l_adapter_cache_bytes", "bytes held by cached adapters", registry=r)
        self.adapter_ms = Histogram("t2l_adapter_generate_ms", "milliseconds to generate one adapter (embed + hypernetwork)",
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.tokens = Counter("t2l_generated_tokens", "tokens decoded", registry=r)
        self.tokens_per_s = Gauge("t2l_tokens_per_second", "decode throughput of the last batch (tokens/s, all rows)", registry=r)
        self.queue_depth = Gauge("t2l_queue_depth", "requests waiting for a batch", registry=r)
        self.batch_size = Histogram("t2l_batch_size", "rows per decode batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
