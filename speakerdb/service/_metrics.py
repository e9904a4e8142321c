"""Prometheus metrics of one server process (``GET /metrics``, text format 0.0.4).

Each app has a registry of its own, so several apps in one process (tests) do not mix
their counts. With ``--workers N`` every worker counts for itself: a scrape reaches one of
them (label the scrape target per worker, or run one worker per server).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from speakerdb.service._batcher import BatchStats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The counters, histograms and gauges of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "speakerdb_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "speakerdb_http_request_duration_seconds",
            "Time from receiving a request to the end of its answer.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "speakerdb_errors",
            "Error answers, by error code (the code of the JSON error body).",
            ["code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "speakerdb_http_requests_in_flight",
            "Requests being received or answered.",
            registry=self.registry,
        )
        self.batch_files = Histogram(
            "speakerdb_embed_batch_files",
            "Recordings per embedding batch (the micro-batcher).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "speakerdb_embed_batch_requests",
            "Requests served by one embedding batch.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "speakerdb_embed_batch_duration_seconds",
            "Time to embed one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_rebuilds = Gauge(
            "speakerdb_index_maintenance_running",
            "1 while the vector index is being rebuilt in the background.",
            registry=self.registry,
        )

    def batch(self, stats: BatchStats) -> None:
        self.batch_files.observe(stats.files)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
