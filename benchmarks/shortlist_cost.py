"""What the compressed kind's longer shortlist costs through the store: top-5 query time of
EnrollmentStore.search with the same speakers indexed as ivf (k + 8 candidates read from
SQL) and as ivfsq (50 read), alternating kinds so that the machine's load hits both alike.

    python benchmarks/shortlist_cost.py [--n 5000] [--rounds 2] [--queries 200]

Prints a readable summary, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
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

MODEL = ModelIdentity("synthetic", "5" * 64, 256, 0.82)


def measure(url: str, vectors: np.ndarray, rounds: int, queries: int) -> dict[str, list[float]]:
    with EnrollmentStore.open(url) as store:
        requests = [
            EnrollRequest(f"s{i:06d}", [NewUtterance(v, f"{i:064x}", None, 3.0, 3.0)])
            for i, v in enumerate(vectors)
        ]
        for begin in range(0, len(requests), 2000):
            store.enroll_many(requests[begin : begin + 2000], MODEL)
    p50s: dict[str, list[float]] = {"ivf": [], "ivfsq": []}
    for _ in range(rounds):
        for kind in p50s:
            with EnrollmentStore.open(url) as store:
                store.rebuild_index(kind)
                store.search(vectors[0], 5, MODEL)
                times = []
                for q in vectors[:queries]:
                    start = time.perf_counter()
                    store.search(q, 5, MODEL)
                    times.append(time.perf_counter() - start)
                p50s[kind].append(percentiles_ms(times)["p50_ms"])
    return p50s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pg", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.random((args.n, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = Path(tempfile.mkdtemp(prefix="speakerdb-shortlist-"))
    os.environ["SPEAKERDB_INDEX_DIR"] = str(folder / "index-cache")
    record: dict[str, object] = {"benchmark": "shortlist_cost", "n": args.n}
    lines = [f"{args.n} speakers, top-5 store p50 per round (ms), ivf vs ivfsq, alternating"]
    try:
        sqlite = measure(f"sqlite:///{folder / 's.sqlite'}", vectors, args.rounds, args.queries)
        record["sqlite"] = sqlite
        lines.append(f"  sqlite:     ivf {sqlite['ivf']}  ivfsq {sqlite['ivfsq']}")
        pg = create_scratch_pg(args.pg, "speakerdb_shortlist")
        if pg is not None:
            try:
                postgres = measure(pg[0], vectors, args.rounds, args.queries)
            finally:
                drop_scratch_pg(pg[1])
            record["postgresql"] = postgres
            lines.append(f"  postgresql: ivf {postgres['ivf']}  ivfsq {postgres['ivfsq']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit(lines, record)


if __name__ == "__main__":
    main()
