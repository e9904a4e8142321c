"""Where loading an index file goes: sha256, HMAC-SHA256 and FAISS deserialisation of an
index payload held in memory (no disk), for one index kind and size.

    python benchmarks/index_load.py [--n 300000] [--kind ivfsq]

Prints a readable summary, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from speakerdb.storage._index_policy import choose_params
from speakerdb.storage._vector_index import VectorIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--kind", default="ivfsq", choices=["flat", "ivf", "ivfsq"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.random((args.n, 256), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = choose_params(args.n, args.kind)
    index = VectorIndex.build(256, np.arange(1, args.n + 1), vectors, params)
    payload = index.to_bytes()
    start = time.perf_counter()
    hashlib.sha256(payload).hexdigest()
    hashed = time.perf_counter()
    hmac.new(b"k" * 32, payload, hashlib.sha256).digest()
    authenticated = time.perf_counter()
    VectorIndex.from_bytes(payload, 256, params)
    loaded = time.perf_counter()
    record = {
        "benchmark": "index_load",
        "n": args.n,
        "index": params.describe(),
        "payload_mib": round(len(payload) / 2**20, 1),
        "sha256_s": round(hashed - start, 3),
        "hmac_s": round(authenticated - hashed, 3),
        "deserialise_s": round(loaded - authenticated, 3),
    }
    emit(
        [
            f"{args.n} vectors, {record['index']}, payload {record['payload_mib']} MiB: "
            f"sha256 {record['sha256_s']} s, HMAC {record['hmac_s']} s, "
            f"FAISS deserialisation {record['deserialise_s']} s"
        ],
        record,
    )


if __name__ == "__main__":
    main()
