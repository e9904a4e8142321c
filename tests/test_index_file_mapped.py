"""The version 3 index file: mapped, authenticated whole before FAISS reads a byte, searched
in place. A mapped index answers as a copied one; lookups by id build the id map on demand;
changes (deletes above all) copy the lists out first and never touch the file; any altered
byte, a wrong key, a truncated or lengthened file is refused unparsed, through the store
too (rebuilt as before); the file is 0600; a version 2 file is still read, then rewritten
as version 3. Real files, real FAISS; SQLite and PostgreSQL for the store."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from helpers import bulk_enroll, clustered_vectors, fake_model
from speakerdb.storage import _index_file as index_file
from speakerdb.storage import _vector_index as vector_index
from speakerdb.storage._index_file import (
    MAGIC,
    MAGIC_V2,
    PAGE,
    Expected,
    IndexFileHeader,
    read_index_file,
    write_index_file,
)
from speakerdb.storage._index_policy import choose_params
from speakerdb.storage._store import EnrollmentStore
from speakerdb.storage._vector_index import VectorIndex

DIM = 32
MODEL = fake_model(DIM)
MODEL_KEY = ("synthetic", "5" * 64, DIM)
N = 3000


def _written(tmp_path: Path, kind: str, key: bytes) -> tuple[Path, VectorIndex, np.ndarray]:
    vectors = clustered_vectors(N, DIM, seed=5)
    ids = np.arange(100, 100 + N, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vectors, choose_params(N, kind))
    header = IndexFileHeader(
        instance_id="inst",
        model_key=list(MODEL_KEY),
        dimension=DIM,
        applied_seq=N,
        kind=index.params.kind,
        nlist=index.params.nlist,
        nprobe=index.params.nprobe,
        count=len(index),
        trained_on=index.params.trained_on,
    )
    path = tmp_path / "index.faiss"
    write_index_file(path, header, index, key)
    return path, index, vectors


def _expected(key: bytes) -> Expected:
    return Expected("inst", MODEL_KEY, key, N)


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_a_mapped_index_answers_as_the_copied_one(tmp_path, kind):
    key = secrets.token_bytes(32)
    path, built, vectors = _written(tmp_path, kind, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes()[:8] == MAGIC
    loaded = read_index_file(path, _expected(key))
    assert not isinstance(loaded, str) and loaded.authentic and loaded.version == 3
    mapped = loaded.index
    assert mapped.mapped
    copied = VectorIndex.from_bytes(built.to_bytes(), DIM, built.params)
    queries = vectors[::97] + 0.05
    for other in (built, copied):
        assert [
            np.array_equal(a, b)
            for a, b in zip(mapped.search(queries, 10), other.search(queries, 10), strict=True)
        ] == [True, True]
    allowed = np.arange(100, 400, dtype=np.int64)
    assert np.array_equal(
        mapped.search(queries, 5, allowed)[1], copied.search(queries, 5, allowed)[1]
    )
    # Lookups by id build the id map on demand, still from the mapping.
    assert np.array_equal(mapped.get(150), copied.get(150))
    assert mapped.get(10**9) is None
    for got, want in zip(mapped.contents(), copied.contents(), strict=True):
        assert np.array_equal(got, want)
    assert mapped.mapped


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_changes_after_a_lazy_id_map_copy_the_lists_out_and_leave_the_file(
    tmp_path, monkeypatch, kind
):
    key = secrets.token_bytes(32)
    path, built, vectors = _written(tmp_path, kind, key)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = read_index_file(path, _expected(key))
    assert not isinstance(loaded, str)
    mapped = loaded.index
    gone = np.array([100, 777, 2000], dtype=np.int64)
    # The first change is a delete, with no id map built yet.
    assert mapped.remove(gone) == 3 and not mapped.mapped
    assert built.remove(gone) == 3
    assert not mapped._has_id_map()  # found by scanning the lists
    # Removals keep scanning until they have cost about as much as the map, then build it.
    monkeypatch.setattr(vector_index, "SCANS_BEFORE_ID_MAP", 2)
    more = np.array([300, 301, 302], dtype=np.int64)
    for victim in more:
        assert mapped.remove(np.array([victim])) == 1 and built.remove(np.array([victim])) == 1
    assert mapped._has_id_map()
    assert mapped.remove(more) == 0
    for row in gone - 100:
        ids = mapped.search(vectors[row : row + 1], 20)[1][0]
        assert not set(gone.tolist()) & set(ids.tolist())
        assert mapped.get(int(row) + 100) is None
    mapped.upsert(np.array([10**6, 150]), vectors[:2])
    built.upsert(np.array([10**6, 150]), vectors[:2])
    assert len(mapped) == len(built) == N - 5
    for got, want in zip(mapped.contents(), built.contents(), strict=True):
        assert np.array_equal(got, want)
    queries = vectors[::61]
    assert np.array_equal(mapped.search(queries, 10)[1], built.search(queries, 10)[1])
    # The mapping was read-only: the file is byte for byte what was written, and reads again.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    again = read_index_file(path, _expected(key))
    assert not isinstance(again, str) and len(again.index) == N


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_any_altered_byte_is_refused_before_faiss_reads_it(tmp_path, monkeypatch):
    # Small pieces: the tag is a tree of many piece HMACs, hashed on several threads.
    monkeypatch.setattr(index_file, "MAC_PIECE", 4096)
    key = secrets.token_bytes(32)
    path, _, _ = _written(tmp_path, "ivfsq", key)
    original = path.read_bytes()
    (length,) = struct.unpack("<I", original[8:12])
    start = 12 + length + (-(12 + length) % PAGE)
    assert start % PAGE == 0 and len(original) - start > 20 * 4096
    ok = read_index_file(path, _expected(key))
    assert not isinstance(ok, str) and ok.authentic
    # A byte of the header's padding, of the first, a middle and the last piece, of the tag.
    for offset in (start - 1, start, start + 5 * 4096 + 17, len(original) - 33, len(original) - 1):
        path.write_bytes(original)
        _flip(path, offset)
        refused = read_index_file(path, _expected(key))
        assert isinstance(refused, str) and "not authenticated" in refused, (offset, refused)
    # Two whole pieces swapped: each piece's HMAC is bound to its place.
    a, b = start + 2 * 4096, start + 3 * 4096
    swapped = original[:a] + original[b : b + 4096] + original[a:b] + original[b + 4096 :]
    assert swapped != original
    path.write_bytes(swapped)
    assert "not authenticated" in str(read_index_file(path, _expected(key)))
    # Another key; a file cut short; bytes appended after the tag.
    path.write_bytes(original)
    assert "not authenticated" in str(read_index_file(path, _expected(b"k" * 32)))
    path.write_bytes(original[:-4096])
    assert isinstance(read_index_file(path, _expected(key)), str)
    path.write_bytes(original + bytes(32))
    assert isinstance(read_index_file(path, _expected(key)), str)
    path.write_bytes(original)
    assert not isinstance(read_index_file(path, _expected(key)), str)


def test_the_store_refuses_an_altered_file_rebuilds_and_rewrites_it_0600(db_url):
    vectors = clustered_vectors(400, DIM, seed=8)
    with EnrollmentStore.open(db_url) as store:
        bulk_enroll(store, vectors, MODEL)
        store.rebuild_index("ivfsq")
        path = store.location.index_path
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes()[:8] == MAGIC
    with EnrollmentStore.open(db_url) as store:
        assert store.index_status().file_state == "current"
        assert store.search(vectors[42], 1, MODEL)[0][0].name == "s000042"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the lists
    path.write_bytes(bytes(data))
    with EnrollmentStore.open(db_url) as store:
        state = store.index_status().file_state
        assert "not authenticated" in state, state
        assert store.search(vectors[42], 1, MODEL)[0][0].name == "s000042"
    # Rebuilt from SQL and written again, authentic, 0600.
    assert path.stat().st_mode & 0o777 == 0o600
    with EnrollmentStore.open(db_url) as store:
        assert store.index_status().file_state == "current"
        stored = store.stored_index()
        assert not isinstance(stored, str) and stored.authentic and stored.version == 3


def test_a_version_2_file_is_still_read_then_rewritten_as_version_3(tmp_path):
    url = f"sqlite:///{tmp_path / 'v2.sqlite'}"
    vectors = clustered_vectors(300, DIM, seed=9)
    with EnrollmentStore.open(url) as store:
        bulk_enroll(store, vectors, MODEL)
        store.rebuild_index("ivf")
        path = store.location.index_path
        key = store.index_key
        stored = store.stored_index()
    assert path is not None and not isinstance(stored, str)
    # The same index in the previous layout, as speakerdb wrote it then.
    payload = stored.index.to_bytes()
    fields = {**asdict(stored.header), "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = json.dumps(fields, sort_keys=True).encode()
    body = MAGIC_V2 + struct.pack("<I", len(encoded)) + encoded + payload
    path.write_bytes(body + hmac.new(key, body, hashlib.sha256).digest())
    with EnrollmentStore.open(url) as store:
        assert store.index_status().file_state == "current"
        assert store.search(vectors[7], 1, MODEL)[0][0].name == "s000007"
    assert path.read_bytes()[:8] == MAGIC  # rewritten on close
    assert path.stat().st_mode & 0o777 == 0o600
    with EnrollmentStore.open(url) as store:
        assert store.index_status().file_state == "current"
