"""What the first identification after a change costs: a database that takes enrollments
while it answers (a contact centre enrolling callers, an archive growing) searches right
after each one. Each search restricts the shared index to its tenant's speaker ids; the
code before kept those ids until the next change and then read them all again, this code
brings them up to date from the change log (speakerdb.storage._tenant_ids).

Arms, each in its own child process, in alternating rounds (ratios: a shared machine):

* ``before``: the code given by ``--before`` (a checkout, e.g. a git worktree of the commit
  before), on its own database;
* ``after``: this code.

Each arm's database holds ``--speakers`` speakers (precomputed unit vectors, no model: the
database part alone) in one tenant, or spread over ten with ``--tenants 10`` (searched by
one of them). A round times ``--queries`` searches with nothing changed, then as many
searches each right after one enrollment (the enrollment untimed).

    python benchmarks/search_after_change.py --before /work/wt/before [--speakers 100000]
        [--queries 100] [--rounds 3] [--tenants 1]

SQLite files in a temporary folder. Prints a readable summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentiles_ms, run_arm

ROOT = Path(__file__).resolve().parents[1]
DIMENSION = 256


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _child(url: str, speakers: int, queries: int, tenants: int, round_: int) -> None:
    """Build the database on first call (state in ``url``), then print the search times
    {"quiet": [s, ...], "after_change": [s, ...]}."""
    from speakerdb._identity import ModelIdentity
    from speakerdb.storage._records import EnrollRequest, NewUtterance
    from speakerdb.storage._store import EnrollmentStore

    model = ModelIdentity("bench", "0" * 64, DIMENSION, 0.5)
    store = EnrollmentStore.open(url)

    def view(t: int) -> EnrollmentStore:
        return store.in_tenant(f"t{t}") if tenants > 1 else store

    if store.model() is None:
        vectors = _vectors(speakers, 0)
        for t in range(tenants):
            requests = [
                EnrollRequest(f"s{i:07d}", [NewUtterance(vectors[i], f"{i:064x}", None, 3.0, 3.0)])
                for i in range(t, speakers, tenants)
            ]
            for begin in range(0, len(requests), 2000):
                view(t).enroll_many(requests[begin : begin + 2000], model)
        store.rebuild_index()
    probes = _vectors(queries, 1)
    fresh = _vectors(queries, 100 + round_)
    me = view(0)
    me.search(probes[:1], 5, model)  # warm: index loaded, caught up, ids known
    quiet, after = [], []
    for probe in probes:
        started = time.perf_counter()
        me.search(probe, 5, model)
        quiet.append(time.perf_counter() - started)
    for i, probe in enumerate(probes):
        sha = f"{(round_ + 1) * 10**9 + i:064x}"  # unlike any enrolled recording's
        utterance = NewUtterance(fresh[i], sha, None, 3.0, 3.0)
        me.enroll(EnrollRequest(f"new-{round_}-{i}", [utterance]), model)
        started = time.perf_counter()
        me.search(probe, 5, model)
        after.append(time.perf_counter() - started)
    store.close()
    print(json.dumps({"quiet": quiet, "after_change": after}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="checkout of the code before (required)")
    parser.add_argument("--speakers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, speakers, queries, tenants, round_ = args.child
        _child(url, int(speakers), int(queries), int(tenants), int(round_))
        return
    if not args.before:
        parser.error("--before is required")

    folder = Path(tempfile.mkdtemp(prefix="search-after-change-"))
    arms = {"before": args.before, "after": str(ROOT)}
    times: dict[str, dict[str, list[float]]] = {a: {"quiet": [], "after_change": []} for a in arms}
    for round_ in range(args.rounds + 1):  # round 0 builds the databases, untimed
        for name, code in arms.items():
            url = f"sqlite:///{folder / name}.sqlite"
            child = [str(x) for x in (url, args.speakers, args.queries, args.tenants, round_)]
            got = run_arm(__file__, code, child, folder / name)
            if round_ > 0:
                for kind in ("quiet", "after_change"):
                    times[name][kind] += got[kind]

    summary = {
        name: {
            f"{kind}_{stat}": value
            for kind, values in kinds.items()
            for stat, value in percentiles_ms(values).items()
            if stat != "mean_ms"
        }
        for name, kinds in times.items()
    }
    ratio = summary["after"]["after_change_p50_ms"] / summary["before"]["after_change_p50_ms"]
    lines = [
        f"{args.speakers} speakers in {args.tenants} tenant(s), {args.queries} searches a kind "
        f"per round, {args.rounds} rounds"
    ]
    for name, row in summary.items():
        lines.append(
            f"{name:7s} search, nothing changed: p50 {row['quiet_p50_ms']} ms p99 "
            f"{row['quiet_p99_ms']} ms; right after an enrollment: p50 "
            f"{row['after_change_p50_ms']} ms p99 {row['after_change_p99_ms']} ms"
        )
    lines.append(f"after / before, search right after an enrollment, p50: {ratio:.3f}x")
    record = {
        "benchmark": "search_after_change",
        "speakers": args.speakers,
        "tenants": args.tenants,
        "queries": args.queries,
        "rounds": args.rounds,
        "arms": summary,
        "after_change_p50_ratio": round(ratio, 4),
    }
    emit(lines, record)


if __name__ == "__main__":
    main()
