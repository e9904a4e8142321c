"""The enrollment store on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from helpers import fake_model, fake_utterance
from speakerdb import scoring
from speakerdb.errors import (
    AlreadyExistsError,
    ModelMismatchError,
    SchemaOutOfDateError,
    SpeakerNotFoundError,
    UsageError,
)
from speakerdb.storage._check import check_store
from speakerdb.storage._location import resolve_location
from speakerdb.storage._migrate import head_revision
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def enroll(store, name, rng, n=2, mode="append", **kw):
    return store.enroll(
        EnrollRequest(name, [fake_utterance(rng) for _ in range(n)], mode, **kw), MODEL
    )


def test_fresh_database_is_created_at_head(db_url):
    with EnrollmentStore.open(db_url) as store:
        report = check_store(store)
        assert report.revision == head_revision() and report.consistent
        assert store.model() is None and store.counts() == (0, 0)
        assert store.search(np.ones(16), 3, MODEL) == [[]]


def test_sqlite_file_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPEAKERDB_URL", raising=False)
    with EnrollmentStore.open() as store:
        path = store.location.sqlite_path
        enroll(store, "alice", np.random.default_rng(0))
    assert path == tmp_path / "xdg" / "speakerdb" / "speakerdb.sqlite"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_URL", f"sqlite:///{tmp_path}/env.sqlite")
    assert resolve_location().sqlite_path == tmp_path / "env.sqlite"
    assert resolve_location(str(tmp_path / "plain.sqlite")).sqlite_path == tmp_path / "plain.sqlite"
    pg = resolve_location("postgresql://u:secret@db.example/speakers")
    assert pg.url.drivername == "postgresql+psycopg"
    assert "secret" not in pg.display and "secret" not in str(pg.index_path)
    assert resolve_location("sqlite://").index_path is None


def test_append_duplicates_overwrite_skip(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        first = [fake_utterance(rng) for _ in range(3)]
        result = store.enroll(EnrollRequest("alice", first[:2], metadata={"team": "a"}), MODEL)
        assert result.created and len(result.added) == 2 and result.speaker.utterances == 2
        again = store.enroll(EnrollRequest("alice", first[1:]), MODEL)
        assert not again.created
        assert again.duplicates == [first[1].sha256] and again.added == [first[2].sha256]
        assert store.speaker("alice").utterances == 3
        assert store.speaker("alice").metadata == {"team": "a"}
        skipped = store.enroll(EnrollRequest("alice", [fake_utterance(rng)], "skip"), MODEL)
        assert skipped.skipped and store.speaker("alice").utterances == 3
        new = fake_utterance(rng)
        over = store.enroll(EnrollRequest("alice", [new], "overwrite"), MODEL)
        assert over.removed == 3 and over.speaker.utterances == 1
        _, centroid = store.centroid("alice")
        assert np.allclose(centroid, new.embedding, atol=1e-6)
        # Same audio in one request: stored once.
        dup = fake_utterance(rng)
        twice = store.enroll(EnrollRequest("bob", [dup, dup]), MODEL)
        assert twice.added == [dup.sha256] and twice.duplicates == [dup.sha256]
        assert check_store(store).consistent


def test_centroid_is_normalised_mean(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        utterances = [fake_utterance(rng) for _ in range(4)]
        store.enroll(EnrollRequest("carol", utterances), MODEL)
        _, centroid = store.centroid("carol")
        mean = np.mean([u.embedding for u in utterances], axis=0)
        assert np.allclose(centroid, mean / np.linalg.norm(mean), atol=1e-6)
        assert np.allclose(store.utterance_embeddings("carol"), [u.embedding for u in utterances])


def test_bad_requests_change_nothing(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "alice", rng)
        before = store.counts()
        bad = [
            EnrollRequest("", [fake_utterance(rng)]),
            EnrollRequest("x\ny", [fake_utterance(rng)]),
            EnrollRequest("dave", []),
            EnrollRequest("dave", [fake_utterance(rng)], mode="replace"),  # type: ignore[arg-type]
            EnrollRequest("dave", [fake_utterance(rng)], metadata={"x": object()}),
        ]
        for request in bad:
            with pytest.raises(UsageError):
                store.enroll(request, MODEL)
        wrong_dim = fake_utterance(rng, dimension=8)
        with pytest.raises(UsageError):
            store.enroll(EnrollRequest("dave", [wrong_dim]), MODEL)
        # A batch with one bad request commits nothing at all.
        with pytest.raises(UsageError):
            store.enroll_many(
                [
                    EnrollRequest("erin", [fake_utterance(rng)]),
                    EnrollRequest("", [fake_utterance(rng)]),
                ],
                MODEL,
            )
        assert store.counts() == before
        assert [s.name for s in store.speakers()] == ["alice"]


def test_model_mismatch_is_refused(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "alice", rng)
        other = fake_model(name="other-model", tag="f")
        with pytest.raises(ModelMismatchError) as info:
            store.enroll(EnrollRequest("bob", [fake_utterance(rng)]), other)
        message = str(info.value)
        assert MODEL.label in message and other.label in message and "--db" in message
        with pytest.raises(ModelMismatchError):
            store.search(np.ones(16), 1, other)
        assert store.counts() == (1, 2)


def test_search_scores_are_exact_cosines(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        for name in ["a", "b", "c", "d", "e"]:
            enroll(store, name, rng, n=3)
        probe = fake_utterance(rng).embedding
        results = store.search(np.stack([probe, -probe]), 3, MODEL)
        assert len(results) == 2 and all(len(r) == 3 for r in results)
        for candidate in results[0]:
            _, centroid = store.centroid(candidate.name)
            assert candidate.score == scoring.cosine(probe, centroid)
        scores = [c.score for c in results[0]]
        assert scores == sorted(scores, reverse=True)
        everyone = store.search(probe, 50, MODEL)[0]
        assert sorted(c.name for c in everyone) == ["a", "b", "c", "d", "e"]


def test_rename_and_metadata(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "alice", rng)
        enroll(store, "bob", rng)
        with pytest.raises(AlreadyExistsError):
            store.rename_speaker("alice", "bob")
        with pytest.raises(SpeakerNotFoundError):
            store.rename_speaker("nobody", "x")
        store.rename_speaker("alice", "alicia")
        assert {s.name for s in store.speakers()} == {"alicia", "bob"}
        assert store.search(store.centroid("alicia")[1], 1, MODEL)[0][0].name == "alicia"
        store.set_metadata("bob", {"dept": "sales"})
        assert store.speaker("bob").metadata == {"dept": "sales"}


def test_delete_leaves_nothing(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "alice", rng)
        result = enroll(store, "bob", rng, n=3)
        bob_id = result.speaker.id
        bob_vectors = store.utterance_embeddings("bob")
        store.search(np.ones(16), 1, MODEL)  # the index now holds bob...
        store.save_index()  # ...and so does its file
        store.delete_speaker("bob")
        loaded = store.stored_index()
        assert not isinstance(loaded, str), loaded
        assert bob_id not in loaded.index.contents()[0].tolist()
        with pytest.raises(SpeakerNotFoundError):
            store.speaker("bob")
        with pytest.raises(SpeakerNotFoundError):
            store.delete_speaker("bob")
        assert [c.name for c in store.search(bob_vectors[0], 5, MODEL)[0]] == ["alice"]
        engine = create_engine(store.location.url)
        with engine.connect() as conn:
            for table in ("speakers", "utterances"):
                key = "id" if table == "speakers" else "speaker_id"
                count = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {key} = {bob_id}"))
                assert count.scalar_one() == 0
        engine.dispose()
        assert check_store(store).consistent
    with EnrollmentStore.open(db_url) as again:
        loaded = again.stored_index()
        assert not isinstance(loaded, str), loaded
        assert loaded.authentic
        assert loaded.index.contents()[0].tolist() == [again.speaker("alice").id]
    # No byte of bob's voiceprints is left on disk (SQLite file, WAL, index file).
    if store.location.sqlite_path is not None:
        folder = store.location.sqlite_path.parent
        blobs = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
        for vector in bob_vectors:
            assert vector.tobytes() not in blobs


def test_two_stores_on_one_database_stay_in_step(db_url, rng):
    """Two processes' views: each catches up from the change log before answering."""
    with EnrollmentStore.open(db_url) as writer, EnrollmentStore.open(db_url) as reader:
        enroll(writer, "alice", rng)
        assert [c.name for c in reader.search(np.ones(16), 5, MODEL)[0]] == ["alice"]
        enroll(writer, "bob", rng)
        enroll(writer, "alice", rng, mode="overwrite")
        names = sorted(c.name for c in reader.search(np.ones(16), 5, MODEL)[0])
        assert names == ["alice", "bob"]
        _, alice = writer.centroid("alice")
        ids, vectors = reader.index_vectors()
        alice_id = writer.speaker("alice").id
        assert np.allclose(vectors[list(ids).index(alice_id)], alice, atol=1e-7)
        writer.delete_speaker("alice")
        assert [c.name for c in reader.search(np.ones(16), 5, MODEL)[0]] == ["bob"]


def test_index_file_is_reused_caught_up_or_rebuilt(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    with EnrollmentStore.open(url) as store:
        for name in "abc":
            enroll(store, name, rng)
        store.search(np.ones(16), 1, MODEL)
    index_path = tmp_path / "a.sqlite.faiss"
    assert index_path.exists()
    with EnrollmentStore.open(url) as store:
        assert store.index_status().file_state == "current"
        enroll(store, "d", rng)  # the file is now one change behind
    with EnrollmentStore.open(url) as store:
        status = store.index_status()
        assert status.file_state in ("current", "stale") and status.vectors == 4
    # Corrupt file: rebuilt from SQL.
    data = bytearray(index_path.read_bytes())
    data[-100] ^= 0xFF  # in the FAISS bytes (the last 32 are the MAC)
    index_path.write_bytes(bytes(data))
    with EnrollmentStore.open(url) as store:
        assert "corrupt" in store.index_status().file_state
        assert len(store.search(np.ones(16), 10, MODEL)[0]) == 4
    # Another database's index file: never applied.
    other_url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    with EnrollmentStore.open(other_url) as other:
        enroll(other, "zed", rng)
    shutil.copy(index_path, tmp_path / "b.sqlite.faiss")
    with EnrollmentStore.open(other_url) as other:
        assert other.index_status().file_state == "built from another database"
        assert [c.name for c in other.search(np.ones(16), 10, MODEL)[0]] == ["zed"]


def test_check_detects_damage(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    with EnrollmentStore.open(url) as store:
        for name in "abc":
            enroll(store, name, rng)
        assert check_store(store).consistent
        b_id = store.speaker("b").id
    raw = sqlite3.connect(tmp_path / "c.sqlite")
    raw.execute(
        "UPDATE speakers SET centroid = ? WHERE id = ?", (np.ones(16, np.float32).tobytes(), b_id)
    )
    raw.commit()
    with EnrollmentStore.open(url) as store:
        report = check_store(store)
        assert not report.consistent
        assert any("centroids not the mean" in p for p in report.problems)
    raw.execute("DELETE FROM utterances WHERE speaker_id = ?", (b_id,))
    raw.commit()
    raw.close()
    with EnrollmentStore.open(url) as store:
        report = check_store(store)
        assert any("without utterances" in p for p in report.problems)


def test_check_detects_an_index_file_that_lies(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'd.sqlite'}"
    with EnrollmentStore.open(url) as store:
        for name in "abc":
            enroll(store, name, rng)
        store.search(np.ones(16), 1, MODEL)
        store.save_index()
        # Replace one vector in the file, keep its header's claims (as a buggy writer would).
        from speakerdb.storage._index_file import write_index_file

        stored = store.stored_index()
        ids, _ = stored.index.contents()
        stored.index.upsert(ids[:1], -np.ones((1, 16), np.float32) / 4)
        write_index_file(store.location.index_path, stored.header, stored.index, store.index_key)
    with EnrollmentStore.open(url) as store:
        report = check_store(store)
        assert not report.consistent
        assert any("index vectors differ" in p for p in report.problems)


def test_outdated_schema_names_the_upgrade_command(db_url, rng):
    from alembic import command

    from speakerdb.storage._engine import create_database_engine
    from speakerdb.storage._migrate import alembic_config, upgrade

    location = resolve_location(db_url)
    engine = create_database_engine(location)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    with pytest.raises(SchemaOutOfDateError, match="speakerdb db upgrade"):
        EnrollmentStore.open(db_url)
    upgrade(engine, location.display)
    engine.dispose()
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "alice", rng)
        assert check_store(store).revision == head_revision()


def test_schema_head_constant_matches_the_migrations():
    from alembic.script import ScriptDirectory

    from speakerdb.storage._migrate import alembic_config

    def alembic_head_revision():
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    assert head_revision() == alembic_head_revision()


def test_migrations_match_the_orm(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from speakerdb.storage._schema import Base

    EnrollmentStore.open(db_url).close()
    engine = create_engine(resolve_location(db_url).url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_a_database_from_elsewhere_is_refused(tmp_path):
    path = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE speakers (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    from speakerdb.errors import StoreError

    with pytest.raises(StoreError, match="not a speakerdb database"):
        EnrollmentStore.open(path)


def test_unreachable_server_is_a_one_line_error(monkeypatch):
    from speakerdb.errors import StoreError

    with pytest.raises(StoreError) as info:
        EnrollmentStore.open("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert "\n" not in str(info.value)


def test_file_permissions_of_index(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    with EnrollmentStore.open(url) as store:
        enroll(store, "a", rng)
        store.search(np.ones(16), 1, MODEL)
    assert oct(os.stat(tmp_path / "p.sqlite.faiss").st_mode & 0o777) == "0o600"
