"""Voiceprints are biometric data: what a delete leaves on disk, how to erase it for good
(``speakerdb db compact``), and file modes. Real files of a real PostgreSQL server (read in
its data directory) and real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import fake_model, fake_utterance
from speakerdb.cli import cli
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model(64)
REQUIRE_PG = os.environ.get("SPEAKERDB_REQUIRE_PG") == "1"


def _enroll(store, name, rng, n=3):
    utterances = [fake_utterance(rng, dimension=64) for _ in range(n)]
    store.enroll(EnrollRequest(name, utterances), MODEL)
    return [u.embedding.tobytes() for u in utterances]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- defect 8: PostgreSQL keeps deleted rows in its files until they are rewritten -------------


def _data_directory(pg_admin) -> Path:
    """The server's data directory, when it is readable from here; else skip (a remote
    server, or no rights), failing instead under SPEAKERDB_REQUIRE_PG=1 when the server is
    local and this process runs as root, where it must be readable."""
    with pg_admin.connect() as conn:
        folder = Path(conn.execute(text("SHOW data_directory")).scalar_one())
    local = make_url(str(pg_admin.url)).host in (None, "", "localhost", "127.0.0.1", "::1")
    if (folder / "PG_VERSION").is_file() and os.access(folder / "base", os.R_OK | os.X_OK):
        return folder
    reason = f"the PostgreSQL data directory {folder} is not readable from this process"
    if REQUIRE_PG and local and os.geteuid() == 0:
        pytest.fail(reason + " although the server is local and this process runs as root")
    pytest.skip(reason + " (a remote server?)")


def _relation_bytes(engine, data_dir: Path, table: str) -> tuple[Path, bytes]:
    """The file of ``table`` (after a CHECKPOINT, so that the server has written every page
    it holds in memory) and its bytes, every 1 GB segment of it."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("CHECKPOINT"))
        relative = conn.execute(text("SELECT pg_relation_filepath(:t)"), {"t": table}).scalar()
    path = data_dir / relative
    segments = [path, *sorted(path.parent.glob(path.name + ".[0-9]*"))]
    return path, b"".join(p.read_bytes() for p in segments if p.exists())


def test_compact_erases_deleted_voiceprints_from_postgresql_files(pg_url, pg_admin):
    data_dir = _data_directory(pg_admin)
    rng = np.random.default_rng(8)
    with EnrollmentStore.open(pg_url) as store:
        _enroll(store, "alice", rng)
        bob = _enroll(store, "bob", rng)
        _, bob_centroid = store.centroid("bob")
        store.delete_speaker("bob")
    engine = create_engine(make_url(pg_url))
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM"))
        # What this test looks for is really there after delete + VACUUM + CHECKPOINT: so it
        # can fail.
        old_path, heap = _relation_bytes(engine, data_dir, "utterances")
        assert all(vector in heap for vector in bob)
        _, speakers_heap = _relation_bytes(engine, data_dir, "speakers")
        assert bob_centroid.tobytes() in speakers_heap
        result = CliRunner().invoke(cli, ["db", "compact", "--db", pg_url, "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["after_bytes"] <= report["before_bytes"]
        for table, secrets in (("utterances", bob), ("speakers", [bob_centroid.tobytes()])):
            _, heap = _relation_bytes(engine, data_dir, table)
            assert heap, f"{table} is empty on disk: the test would prove nothing"
            assert not any(secret in heap for secret in secrets), table
        # The old file of the table is gone (or emptied) once the server has checkpointed.
        assert not old_path.exists() or not any(v in old_path.read_bytes() for v in bob)
        with EnrollmentStore.open(pg_url) as store:
            assert [s.name for s in store.speakers()] == ["alice"]
    finally:
        engine.dispose()


def test_compact_shrinks_a_sqlite_file_and_keeps_every_row(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "c.sqlite"
    with EnrollmentStore.open(path) as store:
        deleted = []
        for i in range(200):
            vectors = _enroll(store, f"s{i:03d}", rng)
            if i % 4:
                deleted += vectors
        for i in range(200):
            if i % 4:
                store.delete_speaker(f"s{i:03d}")
        kept = {s.name: s.utterances for s in store.speakers()}
        result = store.compact()
        # Three quarters of the voiceprints went; the audit log (one entry per enrollment and
        # delete, kept) now holds part of what is left.
        assert result.after_bytes < result.before_bytes * 0.6
        assert {s.name: s.utterances for s in store.speakers()} == kept
    assert path.stat().st_size == result.after_bytes
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert not any(vector in blobs for vector in deleted)


def test_compact_refuses_a_read_only_store(tmp_path):
    from speakerdb.errors import UsageError

    path = tmp_path / "r.sqlite"
    EnrollmentStore.open(path).close()
    with EnrollmentStore.open(path, read_only=True) as store, pytest.raises(UsageError):
        store.compact()


# --- defect 12: a database file made by someone else is made private when we write -------------


def test_a_pre_existing_world_readable_file_is_made_private(tmp_path):
    path = tmp_path / "touched.sqlite"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)  # whatever the umask
    with EnrollmentStore.open(path) as store:
        _enroll(store, "alice", np.random.default_rng(1))
        companions = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in companions)  # WAL mode, while open
        assert {p.name: _mode(p) for p in [path, *companions]} == {
            p.name: 0o600 for p in [path, *companions]
        }


def test_loose_modes_of_an_existing_database_are_tightened_on_write(tmp_path):
    path = tmp_path / "loose.sqlite"
    with EnrollmentStore.open(path) as store:
        _enroll(store, "alice", np.random.default_rng(2))
    # Someone loosened the file; its -wal/-shm are left over from a crashed writer.
    for suffix in ("", "-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if not companion.exists():
            companion.touch()
        os.chmod(companion, 0o644)
    with EnrollmentStore.open(path) as store:
        _enroll(store, "bob", np.random.default_rng(3))
        for suffix in ("", "-wal", "-shm"):
            assert _mode(path.with_name(path.name + suffix)) == 0o600, suffix


def test_reading_leaves_modes_alone(tmp_path):
    """A read-only open writes nothing, so it changes no mode either."""
    path = tmp_path / "shared.sqlite"
    with EnrollmentStore.open(path) as store:
        _enroll(store, "alice", np.random.default_rng(4))
    os.chmod(path, 0o640)
    with EnrollmentStore.open(path, read_only=True) as store:
        assert [s.name for s in store.speakers()] == ["alice"]
    assert _mode(path) == 0o640
    assert sqlite3.connect(path).execute("SELECT count(*) FROM speakers").fetchone() == (1,)
