"""Parts of benchmarks/identify_scale.py: the real dev voiceprints mixed into the synthetic
ones, and a new process answering its first query from an index file.

Real voiceprints: GE2E embeddings of the dev speech (librispeech test-other and vctk: each
speaker's first five files enrolled as one centroid, the other five as known probes;
librispeech singles: even rows enrolled, odd rows unknown probes). They are computed once and
cached (keyed by the model) under $XDG_CACHE_HOME/speakerdb/benchmarks, never in the
repository.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import DATA, ROOT, run_in_new_process


@dataclass
class RealVoiceprints:
    enrolled: np.ndarray  # (e, 256) unit centroids
    known: np.ndarray  # (k, 256) probes of enrolled speakers
    known_rows: np.ndarray  # (k,) row of ``enrolled`` each known probe belongs to
    unknown: np.ndarray  # (u, 256) probes of speakers never enrolled


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "speakerdb" / "benchmarks"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def real_voiceprints() -> RealVoiceprints | None:
    """The dev voiceprints, or None (with a note on stderr) when the data is absent."""
    sets = [DATA / "librispeech" / "manifest.jsonl", DATA / "vctk" / "manifest.jsonl"]
    singles_manifest = DATA / "librispeech" / "singles.jsonl"
    if not all(p.exists() for p in [*sets, singles_manifest]):
        print(f"dev data not found under {DATA}: synthetic voiceprints only", file=sys.stderr)
        return None
    from speakerdb import load_model

    model = load_model()
    cache = _cache_dir() / f"dev-voiceprints-{model.identity.label.replace('/', '_')}.npz"
    if cache.exists():
        stored = np.load(cache)
        return RealVoiceprints(*(stored[k] for k in ("enrolled", "known", "known_rows", "unknown")))
    by_speaker: dict[str, list[Path]] = {}
    for manifest in sets:
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            by_speaker.setdefault(row["label"], []).append(manifest.parent / row["audio_filepath"])
    singles = [
        singles_manifest.parent / json.loads(line)["audio_filepath"]
        for line in singles_manifest.read_text().splitlines()
    ]
    paths = [p for files in by_speaker.values() for p in files] + singles
    vectors = model.embed_files(paths)
    enrolled, known, known_rows = [], [], []
    start = 0
    for row, files in enumerate(by_speaker.values()):
        own = vectors[start : start + len(files)]
        start += len(files)
        half = len(files) // 2
        enrolled.append(_unit(own[:half].mean(axis=0)))
        known.extend(own[half:])
        known_rows.extend([row] * (len(files) - half))
    single_vectors = vectors[start:]
    first_single = len(enrolled)
    enrolled.extend(single_vectors[0::2])
    known.extend(single_vectors[0::2])  # a single's one file is also its own known probe
    known_rows.extend(range(first_single, first_single + len(single_vectors[0::2])))
    result = RealVoiceprints(
        np.stack(enrolled).astype(np.float32),
        np.stack(known).astype(np.float32),
        np.array(known_rows, dtype=np.int64),
        single_vectors[1::2].astype(np.float32),
    )
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **result.__dict__)
    os.chmod(tmp, 0o600)  # biometric output
    os.replace(tmp, cache)
    return result


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
expected = Expected("bench", ("synthetic", "5" * 64, {dim}), bytes.fromhex({key!r}), {seq})
loaded = read_index_file(Path({path!r}), expected)
assert not isinstance(loaded, str) and loaded.authentic, loaded
index = loaded.index
read = time.perf_counter()
resident = rss_mb() - before
full = np.load({full!r}, mmap_mode="r")  # stands in for SQL's centroids, read by id
query = np.load({query!r})
_, ids = index.search(query[None, :], index.params.shortlist(5))
ids = ids[0][ids[0] >= 0]
scores = full[np.sort(ids) - 1] @ query
answered = time.perf_counter()
print(json.dumps({{"import_s": imported - start, "load_s": read - imported,
                   "first_query_ms": (answered - read) * 1000,
                   "total_s": answered - start, "index_resident_mb": resident}}))
"""


def new_process_first_query(index, vectors: np.ndarray, query: np.ndarray) -> dict:
    """Write ``index`` (ids 1..n of ``vectors``) to an authenticated index file, start a
    new Python process that loads it (integrity checks included) and answers one query with
    its exact re-scoring; returns that process's timings and the index's resident memory."""
    from speakerdb.storage._index_file import IndexFileHeader, write_index_file

    key = secrets.token_bytes(32)
    n, dim = vectors.shape
    with tempfile.TemporaryDirectory(prefix="speakerdb-scale-file-") as folder:
        path = Path(folder) / "index.faiss"
        header = IndexFileHeader(
            instance_id="bench",
            model_key=["synthetic", "5" * 64, dim],
            dimension=dim,
            applied_seq=n,
            kind=index.params.kind,
            nlist=index.params.nlist,
            nprobe=index.params.nprobe,
            count=len(index),
            trained_on=index.params.trained_on,
        )
        # The stand-in for SQL's centroids first, the index file last: a replica that has
        # just written (or fetched) its index file has it in its page cache. Written the
        # other way round, the raw vectors (9.8 GB at 10 M) pushed the file out of the
        # cache of this 24 GiB machine and the load measured a cold disk read.
        full = Path(folder) / "full.npy"
        np.save(full, vectors)
        write_index_file(path, header, index, key)
        file_mb = path.stat().st_size / 2**20
        probe = Path(folder) / "query.npy"
        np.save(probe, query)
        code = _NEW_PROCESS.format(
            root=str(ROOT),
            dim=dim,
            key=key.hex(),
            seq=n,
            path=str(path),
            full=str(full),
            query=str(probe),
        )
        record = run_in_new_process(code)
        # Then with the index file out of the page cache (Python and its libraries stay
        # cached: not a whole cold boot). Its pages are written back, then dropped with
        # POSIX_FADV_DONTNEED, which an unprivileged process may ask for its own files. The
        # stand-in for SQL stays warm: SQL is another server with a cache of its own.
        evict_from_page_cache(path)
        record["cold"] = run_in_new_process(code)
    return record | {"file_mb": round(file_mb, 1)}


def evict_from_page_cache(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (after writing back any dirty ones)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
