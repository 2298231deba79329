"""Request counts and latency quantiles of `micro serve`, in Prometheus text format (prometheus_client).

    micro_requests_total{endpoint, status}          counter
    micro_request_seconds{endpoint}                 histogram (buckets for Prometheus' own quantiles)
    micro_request_latency_seconds{endpoint, quantile="0.5"|"0.99"}   over the last WINDOW requests
    micro_backbone_seconds                          histogram of batched model calls
    micro_batch_rows                                histogram of rows per batched model call

Labels carry the route template (/users/{user_id}), never a user id.
"""

from __future__ import annotations

import collections
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

WINDOW = 2048
QUANTILES = (0.5, 0.9, 0.99)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("micro_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("micro_request_seconds", "request latency", ["endpoint"], buckets=BUCKETS, registry=self.registry)
        self.backbone = Histogram("micro_backbone_seconds", "seconds of one batched model call", buckets=BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("micro_batch_rows", "rows per batched model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                                    registry=self.registry)
        self._recent: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        self.registry.register(_Quantiles(self))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        with self._lock:
            self._recent.setdefault(endpoint, collections.deque(maxlen=WINDOW)).append(seconds)

    def quantiles(self) -> dict[str, dict[float, float]]:
        with self._lock:
            recent = {k: sorted(v) for k, v in self._recent.items() if v}
        return {k: {q: v[min(len(v) - 1, int(q * len(v)))] for q in QUANTILES} for k, v in recent.items()}

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Quantiles:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        family = GaugeMetricFamily("micro_request_latency_seconds", f"latency quantiles over the last {WINDOW} requests",
                                   labels=["endpoint", "quantile"])
        for endpoint, qs in self.metrics.quantiles().items():
            for q, v in qs.items():
                family.add_metric([endpoint, str(q)], v)
        yield family
