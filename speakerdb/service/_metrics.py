"""Prometheus metrics of one server process (``GET /metrics``, text format 0.0.4).

Each app has a registry of its own, so several apps in one process (tests) do not mix
their counts. With ``--workers N`` the workers share their counts through files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; ``speakerdb serve``
makes a fresh directory for each run), so whichever worker a scrape reaches answers for the
whole server: counters and histograms summed over the workers, the in-flight gauge summed
over the live ones, the index-maintenance gauge their maximum.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from speakerdb.service._batcher import BatchStats

__all__ = ["CONTENT_TYPE", "MULTIPROCESS_ENV", "Metrics"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before prometheus_client is imported) in every worker of a multi-worker server."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The counters, histograms and gauges of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = bool(os.environ.get(MULTIPROCESS_ENV))
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
        self.spoof_detected = Counter(
            "speakerdb_spoof_detected",
            "Recordings the database's spoofing countermeasure detected as attacks, by route "
            "(verify, identify: answered SPOOF_DETECTED; enroll: rejected).",
            ["route"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "speakerdb_http_requests_in_flight",
            "Requests being received or answered.",
            registry=self.registry,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livemax",
        )

    def batch(self, stats: BatchStats) -> None:
        self.batch_files.observe(stats.files)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        # Every worker's files, this one's included: the server's totals.
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return generate_latest(combined)

    def worker_exited(self) -> None:
        """Drop this process's live gauges from the shared totals (clean shutdown)."""
        if self.shared:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
