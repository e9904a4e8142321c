"""What loading an index file costs a new process: the current layout (version 3: mapped,
authenticated in one parallel pass, lists searched in place, id map built when first needed)
against the previous one (version 2: read, sha256 and HMAC-SHA256 in one pass, FAISS copies
the lists and refills the id hash map), both from the same index, in one run.

    python benchmarks/index_load.py [--n 300000] [--kind ivfsq] [--repeat 3]

Both files are written to a temporary folder (warm page cache: the files were just written,
and dropping the cache needs privileges). In this process, each phase of a version 3 load is
timed (best of --repeat): the tag over the mapping, FAISS's zero-copy read, the first search,
then what is paid later and only if needed: the first change (the lists copied out of the
mapping, the deleted id found by a scan of the lists) and the id map (first lookup by id).
Then a new Python process per layout loads the file through read_index_file and answers one
search: its load and first-query times and resident memory. Prints a readable summary, then
one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import mmap
import secrets
import struct
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, run_in_new_process
from speakerdb.storage._index_file import (
    MAC_SIZE,
    MAGIC_V2,
    PAGE,
    Expected,
    IndexFileHeader,
    file_tag,
    read_index_file,
    write_index_file,
)
from speakerdb.storage._index_policy import choose_params
from speakerdb.storage._vector_index import VectorIndex

DIM = 256
MODEL_KEY = ("synthetic", "5" * 64, DIM)

_NEW_PROCESS = """
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from speakerdb.storage._index_file import Expected, read_index_file

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

imported = time.perf_counter()
before = rss_mb()
expected = Expected("bench", {model_key!r}, bytes.fromhex({key!r}), {seq})
loaded = read_index_file(Path({path!r}), expected)
assert not isinstance(loaded, str) and loaded.authentic, loaded
read = time.perf_counter()
query = np.load({query!r})
_, ids = loaded.index.search(query[None, :], 50)
answered = time.perf_counter()
print(json.dumps({{"import_s": imported - start, "load_s": read - imported,
                   "first_query_ms": (answered - read) * 1000, "total_s": answered - start,
                   "resident_mb": rss_mb() - before, "top": int(ids[0, 0])}}))
"""


def _write_v2(path: Path, header: IndexFileHeader, index: VectorIndex, key: bytes) -> None:
    """The previous layout, as speakerdb wrote it before version 3 (id map included)."""
    payload = index.to_bytes()
    fields = {**asdict(header), "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = json.dumps(fields, sort_keys=True).encode()
    body = MAGIC_V2 + struct.pack("<I", len(encoded)) + encoded
    mac = hmac.new(key, body, hashlib.sha256)
    mac.update(payload)
    with path.open("wb") as fh:
        fh.write(body)
        fh.write(payload)
        fh.write(mac.digest())
    path.chmod(0o600)


def _best(repeat: int, work: object) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def _phases(path: Path, expected: Expected, query: np.ndarray, repeat: int) -> dict:
    """Each phase of a version 3 load, in this process (best of ``repeat``)."""
    with path.open("rb") as fh:
        size = path.stat().st_size
        mapping = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    data = np.frombuffer(mapping, dtype=np.uint8)
    (length,) = struct.unpack("<I", data[8:12].tobytes())
    start = 12 + length
    start += -start % PAGE
    payload = data[start : size - MAC_SIZE]
    header = IndexFileHeader(**json.loads(data[12 : 12 + length].tobytes()))
    tag_s = _best(repeat, lambda: file_tag(expected.key, data[:start].data, payload.data))
    read_s = _best(
        repeat, lambda: VectorIndex.from_mapped(payload, expected.dimension, header.params)
    )
    index = VectorIndex.from_mapped(payload, expected.dimension, header.params)
    t0 = time.perf_counter()
    _, first = index.search(query[None, :], 50)
    t1 = time.perf_counter()
    # The first change (a delete, as a stale file's catch-up may start with): the lists are
    # copied out of the mapping and the id found by a scan, no id map built.
    index.remove(np.array([int(first[0, 0])]))
    t2 = time.perf_counter()
    assert not index.mapped
    index.get(int(first[0, 1]))  # the first lookup by id builds the id map
    t3 = time.perf_counter()
    whole_s = _best(repeat, lambda: read_index_file(path, expected))
    return {
        "tag_s": round(tag_s, 3),
        "tag_gb_per_s": round(payload.size / tag_s / 1e9, 2),
        "faiss_read_s": round(read_s, 4),
        "first_search_ms": round((t1 - t0) * 1000, 2),
        "first_change_s": round(t2 - t1, 3),
        "id_map_s": round(t3 - t2, 3),
        "read_index_file_s": round(whole_s, 3),
    }


def _new_process(path: Path, key: bytes, seq: int, query_path: Path) -> dict:
    code = _NEW_PROCESS.format(
        root=str(ROOT),
        model_key=MODEL_KEY,
        key=key.hex(),
        seq=seq,
        path=str(path),
        query=str(query_path),
    )
    return run_in_new_process(code)


def _median(runs: list[dict]) -> dict:
    """The run with the median load time, and every run's load time."""
    ordered = sorted(runs, key=lambda r: r["load_s"])
    return {**ordered[len(ordered) // 2], "load_s_all": [r["load_s"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--kind", default="ivfsq", choices=["flat", "ivf", "ivfsq"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = vectors[7].copy()
    params = choose_params(args.n, args.kind)
    start = time.perf_counter()
    index = VectorIndex.build(DIM, np.arange(1, args.n + 1), vectors, params)
    build_s = time.perf_counter() - start
    del vectors
    gc.collect()
    key = secrets.token_bytes(32)
    header = IndexFileHeader(
        instance_id="bench",
        model_key=list(MODEL_KEY),
        dimension=DIM,
        applied_seq=args.n,
        kind=params.kind,
        nlist=params.nlist,
        nprobe=params.nprobe,
        count=len(index),
        trained_on=params.trained_on,
    )
    expected = Expected("bench", MODEL_KEY, key, args.n)
    with tempfile.TemporaryDirectory(prefix="speakerdb-index-load-") as folder:
        v3, v2, query_path = (
            Path(folder) / "v3.faiss",
            Path(folder) / "v2.faiss",
            Path(folder) / "q.npy",
        )
        write_index_file(v3, header, index, key)
        _write_v2(v2, header, index, key)
        np.save(query_path, query)
        del index
        gc.collect()
        phases = _phases(v3, expected, query, args.repeat)
        old_s = _best(args.repeat, lambda: read_index_file(v2, expected))
        # New processes alternate between the layouts, --repeat times each: the median of
        # each is reported (a shared machine's load moves single runs by 2x).
        runs: dict[str, list[dict]] = {"v3": [], "v2": []}
        for _ in range(args.repeat):
            runs["v3"].append(_new_process(v3, key, args.n, query_path))
            runs["v2"].append(_new_process(v2, key, args.n, query_path))
        process_v3, process_v2 = _median(runs["v3"]), _median(runs["v2"])
        sizes = {"v3_mib": v3.stat().st_size / 2**20, "v2_mib": v2.stat().st_size / 2**20}
    assert process_v3["top"] == process_v2["top"]
    record = {
        "benchmark": "index_load",
        "n": args.n,
        "index": params.describe(),
        "build_s": round(build_s, 1),
        "file_mib": {k: round(v, 1) for k, v in sizes.items()},
        "v3": phases,
        "v2_read_index_file_s": round(old_s, 3),
        "ratio_v2_to_v3": round(old_s / phases["read_index_file_s"], 1),
        "new_process_ratio_v2_to_v3": round(process_v2["load_s"] / process_v3["load_s"], 1),
        "new_process_v3": process_v3,
        "new_process_v2": process_v2,
    }
    p = phases
    emit(
        [
            f"{args.n} vectors, {record['index']}, built in {record['build_s']} s; "
            f"file {sizes['v3_mib']:.1f} MiB (v3) / {sizes['v2_mib']:.1f} MiB (v2, with id map)",
            f"  v3 load in this process: tag {p['tag_s']} s ({p['tag_gb_per_s']} GB/s), "
            f"FAISS zero-copy read {p['faiss_read_s']} s, first search "
            f"{p['first_search_ms']} ms; whole read_index_file {p['read_index_file_s']} s",
            f"  paid later, only when needed: first change {p['first_change_s']} s (lists "
            f"copied out, id found by a scan), id map {p['id_map_s']} s (first lookup by id)",
            f"  v2 (previous layout) read_index_file {record['v2_read_index_file_s']} s: "
            f"{record['ratio_v2_to_v3']}x v3",
            f"  new process (median of {args.repeat}), v3: load {process_v3['load_s']} s "
            f"{process_v3['load_s_all']}, first search "
            f"{process_v3['first_query_ms']} ms, {process_v3['resident_mb']:.0f} MB resident; "
            f"v2: load {process_v2['load_s']} s {process_v2['load_s_all']}, "
            f"{process_v2['resident_mb']:.0f} MB resident",
        ],
        record,
    )


if __name__ == "__main__":
    main()
