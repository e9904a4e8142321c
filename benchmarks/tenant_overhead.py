"""What tenants cost a lookup's database part: identification (search the shared index and
re-score the shortlist from SQL) and verification (read one speaker's voiceprint and score
it), per second, for

* ``before``: the code without tenants (a checkout given by ``--before``, e.g. /work/main
  before the merge), on its own database;
* ``one tenant``: this code, every speaker in the default tenant (every database upgraded
  from before revision 0012 looks like this);
* ``ten tenants``: this code, the same speakers spread over ten tenants, looked up by one
  of them (its identification restricted to its tenth of the shared index).

Each arm runs in its own child process (the two codes cannot share one), in alternating
blocks so that drift on a shared machine falls on every arm. Precomputed unit vectors, no
model: the worst case for any overhead, with no embedding time to hide it behind.

    python benchmarks/tenant_overhead.py [--before /work/main] [--speakers 20000]
        [--queries 300] [--rounds 3]

SQLite files in a temporary folder.

Prints a readable summary, then one JSON line.
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
from _common import run_arm

ROOT = Path(__file__).resolve().parents[1]
DIMENSION = 256
TENANTS = 10


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _child(arm: str, url: str, speakers: int, queries: int) -> None:
    """Build the arm's database on first call (state in ``url``), then time lookups and
    print {"identify": per s, "verify": per s}."""
    from speakerdb._identity import ModelIdentity
    from speakerdb.storage._records import EnrollRequest, NewUtterance
    from speakerdb.storage._store import EnrollmentStore

    model = ModelIdentity("bench", "0" * 64, DIMENSION, 0.5)
    store = EnrollmentStore.open(url)
    tenants = TENANTS if arm == "tenants" else 1
    view = store.in_tenant("t0") if tenants > 1 else store
    if store.model() is None:
        vectors = _vectors(speakers, 0)
        for t in range(tenants):
            target = store.in_tenant(f"t{t}") if tenants > 1 else store
            requests = [
                EnrollRequest(f"s{i:06d}", [NewUtterance(vectors[i], f"{i:064x}", None, 3.0, 3.0)])
                for i in range(t, speakers, tenants)
            ]
            for begin in range(0, len(requests), 1000):
                target.enroll_many(requests[begin : begin + 1000], model)
        store.rebuild_index()
    probes = _vectors(queries, 1)
    names = [f"s{i:06d}" for i in range(0, speakers, tenants)][:queries]
    view.search(probes[:1], 5, model)  # warm: index loaded and caught up
    started = time.perf_counter()
    for probe in probes:
        view.search(probe, 5, model)
    identify = queries / (time.perf_counter() - started)
    started = time.perf_counter()
    for probe, name in zip(probes, names, strict=False):
        _, voiceprint = view.centroid(name)
        float(probe @ voiceprint)
    verify = len(names) / (time.perf_counter() - started)
    status = store.index_status()
    store.close()
    print(json.dumps({"identify": identify, "verify": verify, "index": status.params}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="/work/main", help="checkout of the code before")
    parser.add_argument("--speakers", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, url, speakers, queries = args.child
        _child(arm, url, int(speakers), int(queries))
        return

    folder = Path(tempfile.mkdtemp(prefix="tenant-bench-"))
    arms = {
        "before": (args.before, "single", f"sqlite:///{folder / 'before.sqlite'}"),
        "one tenant": (str(ROOT), "single", f"sqlite:///{folder / 'one.sqlite'}"),
        "ten tenants": (str(ROOT), "tenants", f"sqlite:///{folder / 'ten.sqlite'}"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for round_ in range(args.rounds + 1):  # round 0 builds the databases, untimed
        for name, (code, arm, url) in arms.items():
            child = [arm, url, str(args.speakers), str(args.queries)]
            got = run_arm(__file__, code, child, folder / name)
            if round_ > 0:
                results[name].append(got)
    summary: dict[str, dict[str, float | str]] = {}
    for name, runs in results.items():
        summary[name] = {
            "identify_per_s": float(np.median([r["identify"] for r in runs])),
            "verify_per_s": float(np.median([r["verify"] for r in runs])),
            "index": str(runs[-1]["index"]),
        }
    base = summary["before"]
    print(f"{args.speakers} speakers, {args.queries} lookups per round, {args.rounds} rounds")
    for name, row in summary.items():
        ratio_i = float(row["identify_per_s"]) / float(base["identify_per_s"])
        ratio_v = float(row["verify_per_s"]) / float(base["verify_per_s"])
        row["identify_ratio"], row["verify_ratio"] = ratio_i, ratio_v
        print(
            f"{name:12s} identify {float(row['identify_per_s']):8.1f}/s ({ratio_i:.2f}x)  "
            f"verify {float(row['verify_per_s']):8.1f}/s ({ratio_v:.2f}x)  index {row['index']}"
        )
    print(json.dumps({"speakers": args.speakers, "arms": summary}))


if __name__ == "__main__":
    main()
