"""What the audit log costs a lookup: throughput of verify with its audit entry against the
same verify without it (the entry's append replaced by nothing), on SQLite and PostgreSQL.

Two measurements per database:

* end to end: ``SpeakerDB.verify`` of a real recording (decode, embed with GE2E on the CPU,
  read the voiceprint, decide, append the entry): what a client of the CLI, the library or
  the service sees;
* database part only: read the voiceprint and score a precomputed embedding, then append
  the entry: the worst case, with no model time to hide the append behind.

With and without alternate in blocks, so that drift (other processes on the machine) falls
on both. The goal (issue 21): lookups with auditing >= 0.8x the throughput without.

    python benchmarks/audit_overhead.py [--pg URL] [--verifies 40] [--reads 400]

Prints a readable summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, DEFAULT_PG_URL, create_scratch_pg, drop_scratch_pg, emit
from speakerdb import SpeakerDB, load_model
from speakerdb.storage._audit import PendingEntry
from speakerdb.storage._records import EnrollRequest, NewUtterance

SPEAKERS = 200
BLOCK = 10


def _fill(db: SpeakerDB, rng: np.random.Generator) -> None:
    dimension = db.identity.dimension
    requests = []
    for i in range(SPEAKERS):
        vectors = rng.standard_normal((2, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        utterances = [
            NewUtterance(v, hashlib.sha256(f"{i}/{j}".encode()).hexdigest(), None, 4.0, 3.5)
            for j, v in enumerate(vectors)
        ]
        requests.append(EnrollRequest(f"speaker-{i:04d}", utterances))
    db.store.enroll_many(requests, db.identity)


def _alternating(
    with_audit: Callable[[], None], without: Callable[[], None], total: int
) -> tuple[float, float]:
    """(lookups per second with the audit entry, without), alternating blocks of BLOCK."""
    spent = {True: 0.0, False: 0.0}
    done = {True: 0, False: 0}
    for block in range(2 * max(1, total // BLOCK)):
        audited = block % 2 == 0
        run = with_audit if audited else without
        started = time.perf_counter()
        for _ in range(BLOCK):
            run()
        spent[audited] += time.perf_counter() - started
        done[audited] += BLOCK
    return done[True] / spent[True], done[False] / spent[False]


def measure(label: str, url: str, model: object, probe: Path, verifies: int, reads: int) -> dict:
    rng = np.random.default_rng(0)
    with SpeakerDB.open(url, model=model) as db:  # type: ignore[arg-type]
        _fill(db, rng)
        store = db.store
        real = store.record_lookups

        def skip(entries: object) -> None:
            return None

        def verify_audited() -> None:
            store.record_lookups = real  # type: ignore[method-assign]
            db.verify("speaker-0007", probe)

        def verify_plain() -> None:
            store.record_lookups = skip  # type: ignore[method-assign]
            db.verify("speaker-0007", probe)

        db.verify("speaker-0007", probe)  # warm: model, caches
        end_to_end = _alternating(verify_audited, verify_plain, verifies)

        vector = rng.standard_normal(db.identity.dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)

        def read_and_score() -> float:
            _, centroid = store.centroid("speaker-0042")
            return float(vector @ centroid)

        def read_audited() -> None:
            score = read_and_score()
            real([PendingEntry("verify", speaker="speaker-0042", decision="reject", score=score)])

        database_part = _alternating(read_audited, read_and_score, reads)
        store.record_lookups = real  # type: ignore[method-assign]
        intact = store.audit_verify()
    return {
        "database": label,
        "verify_per_s_audited": round(end_to_end[0], 2),
        "verify_per_s_plain": round(end_to_end[1], 2),
        "verify_ratio": round(end_to_end[0] / end_to_end[1], 3),
        "db_lookup_per_s_audited": round(database_part[0], 1),
        "db_lookup_per_s_plain": round(database_part[1], 1),
        "db_lookup_ratio": round(database_part[0] / database_part[1], 3),
        "audit_entries": intact.entries,
        "chain_ok": intact.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG_URL, help="PostgreSQL server ('' to skip)")
    parser.add_argument("--verifies", type=int, default=40, help="verifies per arm")
    parser.add_argument("--reads", type=int, default=400, help="database lookups per arm")
    args = parser.parse_args()
    probe = sorted((DATA / "vctk").rglob("*.wav"))[0]
    model = load_model(device="cpu")
    results = []
    folder = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    try:
        results.append(
            measure(
                "sqlite",
                f"sqlite:///{folder / 'a.sqlite'}",
                model,
                probe,
                args.verifies,
                args.reads,
            )
        )
        scratch = create_scratch_pg(args.pg, "audit_bench") if args.pg else None
        if scratch is not None:
            url, handle = scratch
            try:
                results.append(measure("postgresql", url, model, probe, args.verifies, args.reads))
            finally:
                drop_scratch_pg(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = []
    for r in results:
        lines.append(
            f"{r['database']:>10}: verify end to end {r['verify_per_s_audited']}/s audited vs "
            f"{r['verify_per_s_plain']}/s without ({r['verify_ratio']}x); database part "
            f"{r['db_lookup_per_s_audited']}/s vs {r['db_lookup_per_s_plain']}/s "
            f"({r['db_lookup_ratio']}x); chain ok: {r['chain_ok']}"
        )
    emit(lines, {"benchmark": "audit_overhead", "results": results})


if __name__ == "__main__":
    main()
