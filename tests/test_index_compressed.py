"""The compressed index kind (ivfsq: inverted lists of 8-bit quantised residuals): chosen past
a size, answers re-scored exactly against SQL's full-precision centroids, deletes never
answered, its file round-trips and is refused when forged. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import bulk_enroll, clustered_vectors, fake_model
from speakerdb import scoring
from speakerdb.storage import _index_policy as index_policy
from speakerdb.storage._check import check_store
from speakerdb.storage._index_policy import choose_params, needs_rebuild
from speakerdb.storage._store import EnrollmentStore
from speakerdb.storage._vector_index import IndexParams, VectorIndex

DIM = 32
MODEL = fake_model(DIM)
TESTS = Path(__file__).resolve().parent


def probes_of(vectors: np.ndarray, known: int, unknown: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), known, replace=False)
    near = vectors[rows] + 0.1 * rng.standard_normal((known, DIM))
    far = rng.standard_normal((unknown, DIM))
    x = np.concatenate([near, far])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_policy_compresses_past_a_configurable_size(monkeypatch):
    assert choose_params(index_policy.COMPRESSED_MIN).kind == "ivfsq"
    assert choose_params(index_policy.COMPRESSED_MIN - 1).kind == "ivf"
    monkeypatch.setattr(index_policy, "FLAT_MAX", 500)
    monkeypatch.setattr(index_policy, "COMPRESSED_MIN", 2000)
    assert choose_params(1999).kind == "ivf"
    compressed = choose_params(2000)
    assert compressed.kind == "ivfsq" and compressed.nlist == choose_params(1999, "ivf").nlist
    assert choose_params(100, "ivfsq").kind == "ivfsq"  # forced
    assert choose_params(10, "ivfsq").kind == "flat"  # nothing to train on
    assert choose_params(10**6, "ivf").kind == "ivf"
    assert needs_rebuild(choose_params(1999), 2000)  # ivf -> ivfsq
    assert not needs_rebuild(compressed, 1500)  # hysteresis near the boundary
    assert needs_rebuild(compressed, 900)  # back to full precision
    assert not needs_rebuild(choose_params(100, "ivfsq"), 300, "ivfsq")
    assert compressed.shortlist(5) > IndexParams("ivf").shortlist(5) > 5


def test_quantised_contents_survive_updates_and_serialisation():
    vectors = clustered_vectors(3000, DIM)
    ids = np.arange(10, 3010, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vectors, choose_params(3000, "ivfsq"))
    assert index.params.kind == "ivfsq" and not index.params.exact_vectors
    index.remove(ids[:100])
    index.upsert(ids[100:300], -vectors[100:300])
    for k in range(400):  # single inserts: the lists get re-packed on the way
        index.upsert(np.array([10**6 + k]), vectors[k : k + 1])
    expected = dict(zip(ids[100:].tolist(), vectors[100:], strict=True))
    expected.update(zip(ids[100:300].tolist(), -vectors[100:300], strict=True))
    expected.update({10**6 + k: vectors[k] for k in range(400)})
    got_ids, got_vectors = index.contents()
    assert got_ids.tolist() == sorted(expected)
    originals = np.stack([expected[i] for i in got_ids.tolist()])
    # Quantised: close to the originals the lists were trained on (the negated ones lie
    # outside the trained residual range and are clipped: only the shortlist feels it), and
    # exactly what the originals become once stored.
    trained_like = ~np.isin(got_ids, ids[100:300])
    assert np.abs(got_vectors - originals)[trained_like].max() < 0.05
    assert np.array_equal(index.stored_form(originals), got_vectors)
    payload = index.to_bytes()
    assert len(payload) < 0.5 * 4 * DIM * len(index) + 4 * DIM * index.params.nlist + 8192
    again = VectorIndex.from_bytes(payload, DIM, index.params)
    assert np.array_equal(again.contents()[1], got_vectors)
    with pytest.raises(Exception, match="does not hold a ivf index"):
        VectorIndex.from_bytes(payload, DIM, IndexParams("ivf", index.params.nlist, 64))


def test_store_goes_compressed_answers_exactly_and_never_answers_deletes(db_url, monkeypatch):
    monkeypatch.setattr(index_policy, "FLAT_MAX", 500)
    monkeypatch.setattr(index_policy, "COMPRESSED_MIN", 2000)
    vectors = clustered_vectors(3000, DIM, seed=1)
    names = np.array([f"s{i:06d}" for i in range(3000)])
    probes = probes_of(vectors, 150, 50, seed=5)
    with EnrollmentStore.open(db_url) as store:
        bulk_enroll(store, vectors[:1500], MODEL)
        assert store.index_status().params.startswith("ivf(")
        bulk_enroll(store, vectors[1500:], MODEL, start=1500)
        status = store.index_status()
        assert status.params.startswith("ivfsq(") and status.vectors == 3000
        results = store.search(probes, 5, MODEL)
        assert check_store(store).consistent
        # Full-precision centroids from SQL, not the quantised ones.
        row_of = {s.id: int(s.name[1:]) for s in store.speakers()}
        ids, centroids = store.index_vectors()
        enrolled = np.empty_like(vectors)
        enrolled[[row_of[i] for i in ids.tolist()]] = centroids
        assert np.abs(enrolled - vectors).max() < 1e-6  # each the normalised mean of one
        quantised = store._index_cache().index().contents()[1]
        assert np.abs(quantised - centroids).max() > 1e-4
    # Exact search with the one cosine rule over every enrolled centroid.
    exact = np.stack([scoring.cosine_scores(p, enrolled) for p in probes])
    top5 = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    same_top1 = same_top5 = 0
    threshold = MODEL.default_threshold
    for row, found in enumerate(results):
        got = [int(c.name[1:]) for c in found]
        for c, i in zip(found, got, strict=True):
            assert c.score == scoring.cosine(probes[row], enrolled[i])  # exact re-scoring
        assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
        same_top1 += got[0] == top5[row, 0]
        same_top5 += got == top5[row].tolist()
        # The open-set decision on what is returned is the exact one for that speaker.
        assert (found[0].score >= threshold) == (exact[row, got[0]] >= threshold)
    assert same_top1 / len(probes) >= 0.99
    assert same_top5 / len(probes) >= 0.95

    # Deletes: the nearest speakers of some probes, and speakers searched for by their own
    # voiceprint, are never answered again -- here or by a new process loading the file.
    gone = sorted({int(top5[r, 0]) for r in range(20)} | set(range(1600, 1620)))
    with EnrollmentStore.open(db_url) as store:
        for i in gone:
            store.delete_speaker(str(names[i]))
        answered = store.search(np.concatenate([probes[:20], vectors[gone]]), 10, MODEL)
        assert not {c.name for hits in answered for c in hits} & set(names[gone].tolist())
        gone_ids = {i for i, row in row_of.items() if row in set(gone)}
        assert not gone_ids & set(store.index_vectors()[0].tolist())
        stored = store.stored_index()
        assert not isinstance(stored, str)
        assert not gone_ids & set(stored.index.contents()[0].tolist())
        assert check_store(store).consistent
    with EnrollmentStore.open(db_url) as store:
        assert store.index_status().file_state == "current"
        assert store.index_status().params.startswith("ivfsq(")
        answered = store.search(vectors[gone], 10, MODEL)
        assert not {c.name for hits in answered for c in hits} & set(names[gone].tolist())


_FIRST_QUERY = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from helpers import fake_model
from speakerdb.storage._store import EnrollmentStore
with EnrollmentStore.open({url!r}) as store:
    found = store.search(np.load({probe!r}), 1, fake_model({dim}))[0]
    status = store.index_status()
print(json.dumps({{"state": status.file_state, "params": status.params,
                   "best": found[0].name, "score": found[0].score}}))
"""


def _first_query(url: str, probe: Path) -> dict:
    code = _FIRST_QUERY.format(tests=str(TESTS), url=url, probe=str(probe), dim=DIM)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_new_process_answers_from_the_compressed_file_and_refuses_a_forged_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'sq.sqlite'}"
    vectors = clustered_vectors(800, DIM, seed=3)
    with EnrollmentStore.open(url) as store:
        bulk_enroll(store, vectors, MODEL)
        store.rebuild_index("ivfsq")  # forced: stored in the database, the file written
        path = store.location.index_path
        key = store.index_key
        ids = np.array([s.id for s in store.speakers()])
        rows = np.array([int(s.name[1:]) for s in store.speakers()])
        target = store.speaker("s000123").id
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    probe = tmp_path / "probe.npy"
    np.save(probe, vectors[123])
    answer = _first_query(url, probe)
    assert answer["state"] == "current" and answer["params"].startswith("ivfsq(")
    assert answer["best"] == "s000123"

    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12 : 12 + length])

    def write(header: dict, payload: bytes, mac_key: bytes) -> None:
        header = {**header, "sha256": hashlib.sha256(payload).hexdigest()}
        encoded = json.dumps(header, sort_keys=True).encode()
        body = b"SPKDBIX2" + struct.pack("<I", len(encoded)) + encoded + payload
        path.write_bytes(body + hmac.new(mac_key, body, hashlib.sha256).digest())

    # A forger's compressed index without the target, authenticated with a key of its own.
    keep = ids != target
    params = choose_params(int(keep.sum()), "ivfsq")
    forged = VectorIndex.build(DIM, ids[keep], vectors[rows[keep]], params)
    write({**header, "count": int(keep.sum())}, forged.to_bytes(), b"k" * 32)
    answer = _first_query(url, probe)
    assert answer["state"] != "current" and answer["best"] == "s000123"
    # Full-precision vectors under a header claiming quantised ones do not fit its size.
    flat = VectorIndex.build(DIM, ids, vectors[rows], IndexParams("flat"))
    write(header, flat.to_bytes(), key)
    answer = _first_query(url, probe)
    assert "do not fit" in answer["state"] and answer["best"] == "s000123"
    # A small payload of another kind than its (authenticated) header says is refused too.
    few = VectorIndex.build(DIM, ids[:150], vectors[rows[:150]], IndexParams("flat"))
    write({**header, "count": 300}, few.to_bytes(), key)
    answer = _first_query(url, probe)
    assert "unreadable" in answer["state"] and answer["best"] == "s000123"
    # Each refused file was replaced by an honest one: the next process reads it.
    assert _first_query(url, probe)["state"] == "current"
