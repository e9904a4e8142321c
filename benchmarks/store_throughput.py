"""Store throughput: enrollments per second into SQLite and PostgreSQL, and top-5 query
latency of the store at 10k and 100k speakers against a plain numpy scan of the same vectors,
all in one run. Vectors are precomputed (random, unit-norm, 256-d): this measures the store,
not the model.

    python benchmarks/store_throughput.py [--sizes 10000 100000] [--pg URL] [--json]

Prints a readable summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_PG_URL, create_scratch_pg, drop_scratch_pg, emit, percentiles_ms
from speakerdb._identity import ModelIdentity
from speakerdb.storage._records import EnrollRequest, NewUtterance
from speakerdb.storage._store import EnrollmentStore

DIM = 256
MODEL = ModelIdentity("bench-model", "b" * 64, DIM, 0.8)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def requests(
    rng: np.random.Generator, start: int, count: int, per_speaker: int = 2
) -> list[EnrollRequest]:
    vectors = unit(rng, count * per_speaker)
    out = []
    for i in range(count):
        utterances = [
            NewUtterance(
                vectors[i * per_speaker + j],
                hashlib.sha256(f"{start + i}/{j}".encode()).hexdigest(),
                f"/audio/{start + i}-{j}.wav",
                4.0,
                3.5,
            )
            for j in range(per_speaker)
        ]
        out.append(EnrollRequest(f"speaker-{start + i:07d}", utterances))
    return out


def measure_backend(label: str, url: str, sizes: list[int], singles: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    result: dict = {"backend": label}
    with EnrollmentStore.open(url) as store:
        # One enrollment per transaction: what `speakerdb enroll NAME FILE...` does.
        batch = requests(rng, 0, singles)
        start = time.perf_counter()
        for request in batch:
            store.enroll(request, MODEL)
        result["single_enrollments_per_s"] = round(singles / (time.perf_counter() - start), 1)
        # Many speakers per transaction: what a manifest enrollment does.
        enrolled = singles
        chunk = 1000
        bulk_time = 0.0
        for size in sizes:
            while enrolled < size:
                count = min(chunk, size - enrolled)
                batch = requests(rng, enrolled, count)
                start = time.perf_counter()
                store.enroll_many(batch, MODEL)
                bulk_time += time.perf_counter() - start
                enrolled += count
            result["bulk_enrollments_per_s"] = round((enrolled - singles) / bulk_time, 1)
            # A new process: first without an index file (rebuilt from SQL), then with one.
            store.close()
            if store.location.index_path is not None:
                store.location.index_path.unlink(missing_ok=True)
            cold = EnrollmentStore.open(url)
            start = time.perf_counter()
            cold.search(unit(rng, 1)[0], 5, MODEL)
            result[f"first_query_cold_ms_{size}"] = round((time.perf_counter() - start) * 1000, 1)
            cold.close()
            reopened = EnrollmentStore.open(url)
            start = time.perf_counter()
            reopened.search(unit(rng, 1)[0], 5, MODEL)
            result[f"first_query_ms_{size}"] = round((time.perf_counter() - start) * 1000, 1)
            _, vectors = reopened.index_vectors()
            queries = unit(rng, 200)
            times = []
            for q in queries:
                t0 = time.perf_counter()
                reopened.search(q, 5, MODEL)
                times.append(time.perf_counter() - t0)
            scan = []
            for q in queries:
                t0 = time.perf_counter()
                scores = vectors @ q
                np.argpartition(-scores, 5)[:5]
                scan.append(time.perf_counter() - t0)
            result[f"store_top5_{size}"] = percentiles_ms(times)
            result[f"numpy_scan_top5_{size}"] = percentiles_ms(scan)
            result[f"index_{size}"] = reopened.index_status().params
            reopened.save_index()
            store = reopened
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--singles", type=int, default=1000, help="one-per-transaction enrollments")
    parser.add_argument(
        "--pg", default=DEFAULT_PG_URL, help="PostgreSQL server URL (a database is created)"
    )
    parser.add_argument(
        "--json", action="store_true", help="(the JSON line is always printed last)"
    )
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    records = []
    folder = Path(tempfile.mkdtemp(prefix="speakerdb-bench-"))
    try:
        records.append(
            measure_backend(
                "sqlite", f"sqlite:///{folder / 'bench.sqlite'}", sizes, args.singles, 1
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    pg = create_scratch_pg(args.pg, "speakerdb_bench")
    if pg is not None:
        url, handle = pg
        os.environ["SPEAKERDB_INDEX_DIR"] = tempfile.mkdtemp(prefix="speakerdb-bench-index-")
        try:
            records.append(measure_backend("postgresql", url, sizes, args.singles, 2))
        finally:
            drop_scratch_pg(handle)  # type: ignore[arg-type]
            shutil.rmtree(os.environ["SPEAKERDB_INDEX_DIR"], ignore_errors=True)

    lines = []
    for r in records:
        lines.append(
            f"{r['backend']}: {r['single_enrollments_per_s']} enrollments/s one per transaction, "
            f"{r['bulk_enrollments_per_s']} /s in batches of 1000 (2 recordings each)"
        )
        for size in sizes:
            store, scan = r[f"store_top5_{size}"], r[f"numpy_scan_top5_{size}"]
            lines.append(
                f"  {size:>7} speakers ({r[f'index_{size}']}): "
                f"store top-5 p50 {store['p50_ms']:.2f} ms "
                f"p99 {store['p99_ms']:.2f} ms | numpy scan p50 {scan['p50_ms']:.2f} ms "
                f"p99 {scan['p99_ms']:.2f} ms | ratio {store['p50_ms'] / scan['p50_ms']:.2f} | "
                f"first query in a new process {r[f'first_query_ms_{size}']} ms with the index "
                f"file, {r[f'first_query_cold_ms_{size}']} ms without"
            )
    emit(lines, {"benchmark": "store_throughput", "sizes": sizes, "results": records})


if __name__ == "__main__":
    main()
