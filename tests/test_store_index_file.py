"""The index cache file seen as hostile input: oversized and sparse files are rejected before
they are read, forged files are never used, and a stale cache never writes a deleted
speaker's voiceprint back. SQLite and PostgreSQL, real files, real processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import fake_model, fake_utterance
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore
from speakerdb.storage._vector_index import IndexParams, VectorIndex

MODEL = fake_model()
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def _enroll(store, names, rng, n=2):
    for name in names:
        store.enroll(EnrollRequest(name, [fake_utterance(rng) for _ in range(n)]), MODEL)


def _parse(path: Path) -> tuple[bytes, dict, bytes]:
    """(magic, header, rest) of an index file, read the way both layouts agree on."""
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[8:12])
    return data[:8], json.loads(data[12 : 12 + length]), data[12 + length :]


def _compose(magic: bytes, header: dict, payload: bytes, key: bytes | None) -> bytes:
    """An index file as a forger writes one: a valid checksum, a MAC only if given a key."""
    header = {**header, "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = json.dumps(header, sort_keys=True).encode()
    body = magic + struct.pack("<I", len(encoded)) + encoded + payload
    return body + (hmac.new(key, body, hashlib.sha256).digest() if key is not None else b"")


# --- defect 5: a huge file is rejected from its header and size, never read whole -----------------

_PEAK_PROBE = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from helpers import fake_model
from speakerdb.storage._store import EnrollmentStore
with EnrollmentStore.open({url!r}) as store:
    found = store.search(np.ones(16, np.float32), 50, fake_model())[0]
    state = store.index_status().file_state
# VmHWM: this process image's own peak (ru_maxrss carries the forking pytest's across exec).
with open("/proc/self/status") as status:
    peak_kb = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
print(json.dumps({{"peak_kb": peak_kb, "state": state, "found": len(found)}}))
"""


def _peak(url: str) -> dict:
    """Peak RSS (KiB), file state and hits of a fresh process that opens ``url``, loads the
    index (or rejects its file and rebuilds) and searches."""
    code = textwrap.dedent(_PEAK_PROBE.format(tests=str(TESTS), url=url))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_sparse_multi_gigabyte_index_file_is_rejected_without_being_read(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'big.sqlite'}"
    with EnrollmentStore.open(url) as store:
        _enroll(store, [f"s{i}" for i in range(5)], rng)
        store.search(np.ones(16), 1, MODEL)
    path = tmp_path / "big.sqlite.faiss"
    honest = path.read_bytes()
    baseline = _peak(url)
    assert baseline["state"] == "current" and baseline["found"] == 5
    # The same, genuine header, followed by 2 GiB that take no disk space.
    with path.open("r+b") as fh:
        fh.truncate(2 * 1024**3)
    probe = _peak(url)
    assert "corrupt" in probe["state"], probe
    assert probe["found"] == 5  # rebuilt from SQL
    grown_mb = (probe["peak_kb"] - baseline["peak_kb"]) / 1024
    print(
        f"peak RSS {baseline['peak_kb'] / 1024:.0f} MB with the genuine file, "
        f"{probe['peak_kb'] / 1024:.0f} MB with the 2 GiB sparse one"
    )
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB reading a sparse file"
    # The rejected file was replaced by a rebuilt one of honest size.
    assert path.stat().st_size < 2 * len(honest)


def test_a_header_claiming_more_vectors_than_the_database_ever_had_is_rejected(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    with EnrollmentStore.open(url) as store:
        _enroll(store, ["a", "b", "c"], rng)
        store.search(np.ones(16), 1, MODEL)
    path = tmp_path / "claims.sqlite.faiss"
    magic, header, _ = _parse(path)
    # A size that fits the claim exactly: only the database can tell that it is a lie.
    claimed = 5_000_000
    header = {**header, "count": claimed, "applied_seq": claimed}
    encoded = json.dumps(header, sort_keys=True).encode()
    with path.open("wb") as fh:
        fh.write(magic + struct.pack("<I", len(encoded)) + encoded)
        fh.truncate(12 + len(encoded) + claimed * (16 * 4 + 8) + 90)
    with EnrollmentStore.open(url) as store:
        state = store.index_status().file_state
        assert "ahead of the database" in state or "more vectors" in state, state
        assert len(store.search(np.ones(16), 10, MODEL)[0]) == 3


# --- defect 9: a forged file cannot hide a speaker ---------------------------------------------


@pytest.mark.parametrize("forgery", ["unauthenticated layout", "wrong key"])
def test_a_forged_index_file_cannot_hide_a_speaker(db_url, rng, forgery):
    with EnrollmentStore.open(db_url) as store:
        _enroll(store, ["alice", "bob", "carol", "dave"], rng)
        store.search(np.ones(16), 1, MODEL)
        store.save_index()
        path = store.location.index_path
        carol = store.speaker("carol").id
        _, carol_voice = store.centroid("carol")
    _, header, _ = _parse(path)
    # The forger's index: everyone but carol, consistent in itself (count, checksum).
    with EnrollmentStore.open(db_url) as store:
        ids, vectors = store.index_vectors()
    keep = ids != carol
    forged = VectorIndex.build(16, ids[keep], vectors[keep], IndexParams("flat")).to_bytes()
    header = {**header, "count": int(keep.sum())}
    if forgery == "unauthenticated layout":
        # The layout a file had before authentication: a checksum, no MAC.
        path.write_bytes(_compose(b"SPKDBIX1", header, forged, None))
    else:
        path.write_bytes(_compose(b"SPKDBIX2", header, forged, secrets.token_bytes(32)))
    with EnrollmentStore.open(db_url) as store:
        best = store.search(carol_voice, 1, MODEL)[0]
        assert [c.name for c in best] == ["carol"]
        assert store.index_status().file_state != "current"
    # The forged file was replaced by one the database's key authenticates, holding carol.
    with EnrollmentStore.open(db_url) as store:
        assert store.index_status().file_state == "current"
        assert carol in store.index_vectors()[0].tolist()


# --- defect 7: deletion wins over a stale cache -------------------------------------------------


def test_a_stale_cache_never_writes_a_deleted_voiceprint_back(db_url, rng):
    with EnrollmentStore.open(db_url) as setup:
        _enroll(setup, ["alice", "bob", "carol"], rng)
        _, bob_voice = setup.centroid("bob")
    holder = EnrollmentStore.open(db_url)  # process A: its cache holds bob
    assert "bob" in {c.name for c in holder.search(np.ones(16), 10, MODEL)[0]}
    with EnrollmentStore.open(db_url) as deleter:  # process B
        deleter.delete_speaker("bob")
        path = deleter.location.index_path
    holder.close()  # A saves its cache on the way out: it must catch up first
    assert path.exists()
    assert bob_voice.tobytes() not in path.read_bytes()
    from speakerdb.storage._check import check_store

    with EnrollmentStore.open(db_url) as store:
        report = check_store(store)
        assert report.consistent, report.problems
        assert "bob" not in {c.name for c in store.search(bob_voice, 10, MODEL)[0]}


_HOLDER = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from helpers import fake_model
from speakerdb.storage._store import EnrollmentStore
store = EnrollmentStore.open({url!r})
print(len(store.search(np.ones(16, np.float32), 10, fake_model())[0]), flush=True)
sys.stdin.readline()  # the test deletes a speaker meanwhile
store.close()
print("closed", flush=True)
"""


def test_a_stale_cache_in_another_process_never_resurrects_a_deleted_speaker(db_url, rng):
    with EnrollmentStore.open(db_url) as setup:
        _enroll(setup, ["alice", "bob", "carol"], rng)
        _, bob_voice = setup.centroid("bob")
        path = setup.location.index_path
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER.format(tests=str(TESTS), url=db_url))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "3"  # its cache holds bob now
    with EnrollmentStore.open(db_url) as deleter:
        deleter.delete_speaker("bob")
    out, err = holder.communicate("go\n", timeout=120)
    assert holder.returncode == 0 and out.strip() == "closed", err
    assert path.exists() and bob_voice.tobytes() not in path.read_bytes()


def test_check_reports_an_index_file_holding_a_deleted_speaker(db_url, rng):
    """A deleter that died between its commit and rewriting the file leaves the old file:
    catching up would hide the voiceprint from searches, but it is still on disk."""
    from speakerdb.storage._check import check_store

    with EnrollmentStore.open(db_url) as store:
        _enroll(store, ["alice", "bob"], rng)
        store.search(np.ones(16), 1, MODEL)
        store.save_index()
        path = store.location.index_path
        before_delete = path.read_bytes()
        bob = store.speaker("bob").id
        store.delete_speaker("bob")
    path.write_bytes(before_delete)
    with EnrollmentStore.open(db_url) as store:
        report = check_store(store)
        assert not report.consistent
        assert any("deleted" in p and str(bob) in p for p in report.problems), report.problems
        store.rebuild_index()
        assert check_store(store).consistent
