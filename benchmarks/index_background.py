"""Query latency while the vector index switches from flat to IVF in the background.

A real SQLite store (``background_index=True``, as the service opens it) grows past FLAT_MAX
speakers; the next query starts the rebuild in a thread of its own. Measured in one run:
single-query latencies on the flat index before (the baseline), during the rebuild, and on
the IVF index after; the rebuild's duration and the query that started it. Every answer is
checked (exact top-1). The ratio that matters is p99 during / p99 before: queries should not
wait for the rebuild (it trains on the other core at a lower priority).

    python benchmarks/index_background.py [--extra 1000] [--probes 300]

Prints a readable summary, then one JSON line. (This measurement was an assertion in
tests/test_index_background.py; timings belong here, the tests keep the exact answers.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, percentiles_ms
from speakerdb._identity import ModelIdentity
from speakerdb.storage._index_policy import FLAT_MAX
from speakerdb.storage._records import EnrollRequest, NewUtterance
from speakerdb.storage._store import EnrollmentStore

DIM = 256
MODEL = ModelIdentity("bench-model", "0" * 64, DIM, 0.5)


def voiceprints(n: int, seed: int) -> np.ndarray:
    """(n, DIM) unit vectors around 64 centres (speaker-like clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM))
    x = centres[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def enroll(store: EnrollmentStore, vectors: np.ndarray, start: int) -> None:
    requests = [
        EnrollRequest(f"s{start + i:06d}", [NewUtterance(v, f"{start + i:064x}", None, 3.0, 3.0)])
        for i, v in enumerate(vectors)
    ]
    for begin in range(0, len(requests), 5000):
        store.enroll_many(requests[begin : begin + 5000], MODEL)


def timed(store: EnrollmentStore, vectors: np.ndarray, picked: np.ndarray) -> list[float]:
    latencies = []
    for i in picked:
        started = time.perf_counter()
        found = store.search(vectors[i], 5, MODEL)[0]
        latencies.append(time.perf_counter() - started)
        if found[0].name != f"s{i:06d}":
            raise SystemExit(f"wrong answer for s{i:06d}: {found[0].name}")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", type=int, default=1000, help="speakers past FLAT_MAX")
    parser.add_argument("--probes", type=int, default=300, help="queries before and after")
    args = parser.parse_args()
    first = FLAT_MAX - args.extra
    total = FLAT_MAX + args.extra
    vectors = voiceprints(total, seed=3)
    rng = np.random.default_rng(4)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'big.sqlite'}"
        with EnrollmentStore.open(url) as writer:
            enroll(writer, vectors[:first], 0)
        with EnrollmentStore.open(url, background_index=True) as store:
            assert store.index_status().params == "flat"
            before = timed(store, vectors, rng.integers(0, first, args.probes))
            with EnrollmentStore.open(url) as writer:
                enroll(writer, vectors[first:], first)
            started = time.perf_counter()
            trigger = timed(store, vectors, rng.integers(0, total, 1))
            during: list[float] = []
            while store.index_maintenance_running():
                during += timed(store, vectors, rng.integers(0, total, 20))
            rebuild_s = time.perf_counter() - started
            status = store.index_status()
            if not status.params.startswith("ivf"):
                raise SystemExit(f"no switch to IVF: {status.params}")
            after = timed(store, vectors, rng.integers(0, total, args.probes))
    b, d, a = percentiles_ms(before), percentiles_ms(during or [np.nan]), percentiles_ms(after)
    ratio = d["p99_ms"] / b["p99_ms"] if during else None
    record = {
        "benchmark": "index_background",
        "speakers": total,
        "flat_max": FLAT_MAX,
        "rebuild_s": round(rebuild_s, 3),
        "trigger_query_ms": round(trigger[0] * 1000, 3),
        "queries_during": len(during),
        "max_during_ms": round(max(during) * 1000, 3) if during else None,
        "before_flat": b,
        "during_rebuild": d,
        "after_ivf": a,
        "p99_during_over_before": round(ratio, 3) if ratio is not None else None,
        "ivf": status.params,
    }
    lines = [
        f"{total} speakers, flat -> {status.params}: rebuild {rebuild_s:.2f} s in the background",
        f"  flat before  p50 {b['p50_ms']:.2f} ms  p99 {b['p99_ms']:.2f} ms  (baseline)",
        f"  during       p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms  over "
        f"{len(during)} queries; the trigger query {trigger[0] * 1000:.1f} ms",
        f"  ivf after    p50 {a['p50_ms']:.2f} ms  p99 {a['p99_ms']:.2f} ms",
        f"  p99 during / before: {ratio:.2f}x" if ratio is not None else "  no query ran during",
    ]
    emit(lines, record)


if __name__ == "__main__":
    main()
