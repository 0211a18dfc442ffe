"""Prometheus metrics, in a registry per app so several apps (tests, embedding in another
process) never collide in the global default registry."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from diffembed.serve.batcher import BatchStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("diffembed_requests", "HTTP requests answered.", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("diffembed_request_latency_seconds", "Time to answer a request.", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.embeddings = Counter("diffembed_embeddings", "Vectors returned to clients.", ["route"], registry=r)
        self.tokens = Counter("diffembed_tokens", "Input tokens embedded for clients.", ["route"], registry=r)
        self.batch_requests = Histogram("diffembed_batch_requests", "Requests merged into one model call.",
                                        ["kind"], buckets=_COUNT_BUCKETS, registry=r)
        self.batch_items = Histogram("diffembed_batch_items", "Texts or documents in one model call.",
                                     ["kind"], buckets=_COUNT_BUCKETS, registry=r)
        self.batch_tokens = Histogram("diffembed_batch_padded_tokens", "Padded tokens in one model call.",
                                      ["kind"], buckets=tuple(b * 64 for b in _COUNT_BUCKETS), registry=r)
        self.queue_wait = Histogram("diffembed_queue_wait_seconds", "Time a request waited for the model thread.",
                                    buckets=_WAIT_BUCKETS, registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_requests.labels(stats.kind).observe(stats.requests)
        self.batch_items.labels(stats.kind).observe(stats.items)
        self.batch_tokens.labels(stats.kind).observe(stats.padded_tokens)
        for wait in stats.queue_waits:
            self.queue_wait.observe(wait)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
