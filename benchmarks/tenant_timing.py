"""Does answer time tell a key of one tenant that a name exists in another?

A real ``speakerdb serve`` on a SQLite database with two tenants: B enrolls ``anna``, A enrolls
``alpha``. With A's admin key, requests about B's ``anna`` and about a name enrolled nowhere
(same length) are sent interleaved, ``--rounds`` of each, on two routes: show, and verify
(a recording uploaded); routes that change things are left out.
Both kinds must be 404 with identical bodies (tests/test_tenants.py checks that); this
measures whether their latency differs: the median and p90 of each and their ratio, and a
permutation test's p-value for the difference of medians (a p-value far below 0.05 would
mean the timing leaks). Latency figures belong here, not in the tests.

    python benchmarks/tenant_timing.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import DATA, emit
from service_helpers import Server, upload

B_NAME, NEVER = "anna-b", "zora-n"  # same length


def _voices() -> dict[str, list[Path]]:
    import json

    groups: dict[str, list[Path]] = {}
    for line in (DATA / "vctk" / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            groups.setdefault(str(item["label"]), []).append(DATA / "vctk" / item["audio_filepath"])
    return {k: sorted(v) for k, v in groups.items()}


def _permutation_p(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 2000) -> float:
    """Two-sided p-value of |median(a) - median(b)| under random relabelling."""
    observed = abs(np.median(a) - np.median(b))
    pooled = np.concatenate([a, b])
    hits = 0
    for _ in range(n):
        rng.shuffle(pooled)
        hits += abs(np.median(pooled[: a.size]) - np.median(pooled[a.size :])) >= observed
    return float((hits + 1) / (n + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    from speakerdb import SpeakerDB

    voices = _voices()
    anna, alpha = (voices[k] for k in sorted(voices)[:2])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/tenants.sqlite"
        with SpeakerDB.open(url) as db:
            b = db.in_tenant("tenant-b")
            b.enroll(B_NAME, anna[:2])
            a = db.in_tenant("tenant-a")
            a.enroll("alpha", alpha[:2])
            key = a.create_key("a-admin", ["admin"]).secret
        env = {**os.environ, "SPEAKERDB_INDEX_DIR": f"{tmp}/ix"}
        routes: dict[str, Any] = {
            "show": lambda c, name: c.get(f"/v1/speakers/{name}"),
            "verify": lambda c, name: c.post(
                f"/v1/speakers/{name}/verify", files=upload([anna[3]])
            ),
        }
        results: dict[str, dict[str, Any]] = {}
        with Server(url, env=env) as server, server.client(key) as client:
            for route, call in routes.items():
                for name in (B_NAME, NEVER):  # warm-up
                    call(client, name)
                times: dict[str, list[float]] = {B_NAME: [], NEVER: []}
                for i in range(args.rounds):
                    order = (B_NAME, NEVER) if i % 2 == 0 else (NEVER, B_NAME)
                    for name in order:
                        started = time.perf_counter()
                        response = call(client, name)
                        times[name].append(time.perf_counter() - started)
                        assert response.status_code == 404, (route, name, response.text)
                other, never = (np.asarray(times[n]) * 1000 for n in (B_NAME, NEVER))
                results[route] = {
                    "other_tenant_ms": {
                        "p50": round(float(np.median(other)), 3),
                        "p90": round(float(np.percentile(other, 90)), 3),
                    },
                    "never_ms": {
                        "p50": round(float(np.median(never)), 3),
                        "p90": round(float(np.percentile(never, 90)), 3),
                    },
                    "p50_ratio": round(float(np.median(other) / np.median(never)), 3),
                    "permutation_p": round(_permutation_p(other, never, rng), 4),
                }
    record = {
        "benchmark": "tenant_timing",
        "rounds": args.rounds,
        "routes": results,
        "load": os.getloadavg(),
    }
    lines = [f"404 answers to tenant A's key, {args.rounds} interleaved rounds each"]
    for route, r in results.items():
        lines.append(
            f"{route:7s} another tenant's name p50 {r['other_tenant_ms']['p50']} ms, "
            f"a name enrolled nowhere p50 {r['never_ms']['p50']} ms: ratio {r['p50_ratio']}, "
            f"permutation p {r['permutation_p']}"
        )
    emit(lines, record)


if __name__ == "__main__":
    main()
