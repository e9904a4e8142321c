"""Issue 16, defect 3: index caches belong to a database, not to the spelling of its URL.

A PostgreSQL database reached as ``...@127.0.0.1:5432/db`` and as ``...@localhost:5432/db``
is one database with one cache; a SQLite file reached through a symlink, a relative path or
after being moved is one database too. A delete (and ``db compact``, ``db rebuild-index``)
leaves no cache of it on this machine holding the deleted voiceprint, and ``db check``
sees every cache of the database. Copies of a database (a copied file, a PostgreSQL
database made from another as template) are other databases: their caches are left alone.
Real files, real PostgreSQL, the real CLI on real speech for the scenario of the issue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from helpers import by_speaker, fake_model, fake_utterance, require_data
from speakerdb.cli import cli
from speakerdb.storage._check import check_store
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


@pytest.fixture
def rng():
    return np.random.default_rng(316)


def _enroll(store: EnrollmentStore, names, rng) -> None:
    for name in names:
        store.enroll(EnrollRequest(name, [fake_utterance(rng) for _ in range(2)]), MODEL)


def _cache_folders() -> list[Path]:
    """Every folder this test's processes may keep index caches in."""
    folders = [Path(os.environ["XDG_CACHE_HOME"]) / "speakerdb"]
    if os.environ.get("SPEAKERDB_INDEX_DIR"):
        folders.append(Path(os.environ["SPEAKERDB_INDEX_DIR"]))
    return folders


def _holding(blob: bytes, folders: list[Path]) -> list[Path]:
    """Files under ``folders`` containing ``blob``."""
    return [
        path
        for folder in folders
        if folder.is_dir()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and blob in path.read_bytes()
    ]


def _cli(*argv: str) -> tuple[int, dict | list | None, str]:
    result = CliRunner().invoke(cli, [*argv, "--json"])
    doc = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, doc, result.output


def _localhost_spelling(url: str) -> str:
    parsed = make_url(url)
    if parsed.host != "127.0.0.1":
        pytest.skip(f"the test server is not reached at 127.0.0.1 ({parsed.host})")
    return parsed.set(host="localhost").render_as_string(hide_password=False)


# --- the scenario of the issue ---------------------------------------------------------------


def test_postgresql_delete_and_compact_leave_no_cache_of_another_url_spelling(pg_url):
    """Enroll alice and bob through 127.0.0.1, identify once through localhost (another
    process), delete alice through 127.0.0.1, compact: no cache file on this machine holds
    alice's voiceprint, and `db check` through either spelling says consistent."""
    require_data()
    voices = by_speaker("vctk")
    by_address, by_name = pg_url, _localhost_spelling(pg_url)
    for name, speaker in (("alice", "p225"), ("bob", "p226")):
        code, _, output = _cli("enroll", name, *map(str, voices[speaker][:3]), "--db", by_address)
        assert code == 0, output
    with EnrollmentStore.open(by_address, read_only=True) as store:
        _, alice = store.centroid("alice")
    identified = subprocess.run(
        [
            sys.executable,
            "-m",
            "speakerdb",
            "identify",
            str(voices["p225"][5]),
            "--db",
            by_name,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
        check=False,
    )
    assert identified.returncode == 0, identified.stderr
    assert json.loads(identified.stdout)["best"] == "alice"
    # The identification left a cache holding alice: what the delete must not leave behind.
    assert _holding(alice.tobytes(), _cache_folders())

    code, _, output = _cli("speakers", "delete", "alice", "--yes", "--db", by_address)
    assert code == 0, output
    code, _, output = _cli("db", "compact", "--db", by_address)
    assert code == 0, output
    assert _holding(alice.tobytes(), _cache_folders()) == []
    for url in (by_address, by_name):
        code, report, output = _cli("db", "check", "--db", url)
        assert code == 0 and report is not None and report["consistent"], output
        assert report["index"]["other_files"] == []
    # Both spellings now find one and the same cache file.
    with EnrollmentStore.open(by_address) as a, EnrollmentStore.open(by_name) as b:
        assert a.location.index_path == b.location.index_path
        assert a.database_identity == b.database_identity


def test_a_cache_of_another_url_spelling_holding_a_deleted_speaker_is_reported(pg_url, rng):
    """A cache of the same database under another name (as an earlier speakerdb named the
    cache of another URL spelling) that still holds a deleted voiceprint: `db check` reports
    it, `db rebuild-index` erases it."""
    with EnrollmentStore.open(pg_url) as store:
        _enroll(store, ["alice", "bob"], rng)
        store.search(np.ones(16), 1, MODEL)
        store.save_index()
        own = store.location.index_path
        assert own is not None
        before = own.read_bytes()
        _, alice = store.centroid("alice")
        store.delete_speaker("alice")
    stray = own.with_name("index-0123456789abcdef0123.faiss")
    stray.write_bytes(before)
    stray.chmod(0o600)
    code, report, output = _cli("db", "check", "--db", pg_url)
    assert code != 0 and report is not None and not report["consistent"], output
    assert any(str(stray) in p and "deleted" in p for p in report["problems"]), report
    code, _, output = _cli("db", "rebuild-index", "--db", pg_url)
    assert code == 0, output
    assert not stray.exists() and _holding(alice.tobytes(), _cache_folders()) == []
    code, report, output = _cli("db", "check", "--db", pg_url)
    assert code == 0 and report is not None and report["consistent"], output


def test_a_delete_erases_the_cache_another_cache_folder_holds(pg_url, rng, monkeypatch, tmp_path):
    """Two processes with different cache folders ($SPEAKERDB_INDEX_DIR and the default):
    a delete through one leaves the other's file without the voiceprint."""
    elsewhere = tmp_path / "other-cache-folder"
    with EnrollmentStore.open(pg_url) as store:
        _enroll(store, ["alice", "bob"], rng)
        _, alice = store.centroid("alice")
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(elsewhere))
    with EnrollmentStore.open(pg_url) as other:
        other.search(np.ones(16), 2, MODEL)
    assert _holding(alice.tobytes(), [elsewhere])
    monkeypatch.delenv("SPEAKERDB_INDEX_DIR")  # the default folder now
    with EnrollmentStore.open(pg_url) as store:
        store.search(np.ones(16), 2, MODEL)
        store.delete_speaker("alice")
    assert _holding(alice.tobytes(), [elsewhere, *_cache_folders()]) == []


def test_a_postgresql_copy_keeps_its_own_cache(pg_url, pg_admin, rng):
    """A database created from another as template has the same instance id but is another
    database: its own cache file, untouched by deletes in the original, not reported by the
    original's check."""
    with EnrollmentStore.open(pg_url) as store:
        _enroll(store, ["alice", "bob"], rng)
        _, alice = store.centroid("alice")
    source = make_url(pg_url).database
    copy = f"speakerdb_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"'))
    copy_url = make_url(pg_url).set(database=copy).render_as_string(hide_password=False)
    try:
        with EnrollmentStore.open(copy_url) as twin:
            twin.search(np.ones(16), 2, MODEL)
            twin_file = twin.location.index_path
            assert twin_file is not None
        with EnrollmentStore.open(pg_url) as store:
            assert store.instance_id == twin.instance_id
            assert store.location.index_path != twin_file
            store.delete_speaker("alice")
            report = check_store(store)
            assert report.consistent and report.index["other_files"] == [], report.problems
        assert twin_file.exists() and alice.tobytes() in twin_file.read_bytes()
        with EnrollmentStore.open(copy_url) as twin:
            assert "alice" in {c.name for c in twin.search(alice, 2, MODEL)[0]}
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))


# --- SQLite: spellings of one file, a moved file, a copied file -------------------------------


def test_sqlite_spellings_share_one_cache(tmp_path, rng, monkeypatch):
    """Through a symlink and a relative path the store finds the file's one cache (this
    held before the fix too: the path is resolved); a delete leaves no file holding the
    voiceprint."""
    real = tmp_path / "data" / "speakers.sqlite"
    real.parent.mkdir()
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    with EnrollmentStore.open(real) as store:
        _enroll(store, ["alice", "bob"], rng)
        _, alice = store.centroid("alice")
    with EnrollmentStore.open(f"sqlite:///{link}") as through_link:
        through_link.search(np.ones(16), 2, MODEL)
        cache = through_link.location.index_path
    monkeypatch.chdir(tmp_path)
    with EnrollmentStore.open("data/speakers.sqlite") as relative:
        assert relative.location.index_path == cache == real.with_name("speakers.sqlite.faiss")
        relative.delete_speaker("alice")
    assert _holding(alice.tobytes(), [tmp_path]) == []


def test_a_moved_sqlite_file_leaves_no_cache_behind_after_a_delete(tmp_path, rng):
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    with EnrollmentStore.open(old) as store:
        _enroll(store, ["alice", "bob"], rng)
        _, alice = store.centroid("alice")
        store.search(np.ones(16), 2, MODEL)
    assert alice.tobytes() in (tmp_path / "old.sqlite.faiss").read_bytes()
    for suffix in ("", "-wal", "-shm"):
        if old.with_name(old.name + suffix).exists():
            old.with_name(old.name + suffix).rename(new.with_name(new.name + suffix))
    with EnrollmentStore.open(new) as store:
        store.delete_speaker("alice")
    assert _holding(alice.tobytes(), [tmp_path]) == []
    assert not (tmp_path / "old.sqlite.faiss").exists()


def test_check_lists_the_cache_a_moved_sqlite_file_left(tmp_path, rng):
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    with EnrollmentStore.open(old) as store:
        _enroll(store, ["alice", "bob"], rng)
        store.search(np.ones(16), 2, MODEL)
    old.rename(new)
    with EnrollmentStore.open(new) as store:
        assert [p.name for p in store.other_cache_files()] == ["old.sqlite.faiss"]
        report = check_store(store)
        assert report.consistent and report.index["other_files"] == [str(old) + ".faiss"]


def test_check_reports_the_cache_a_moved_sqlite_file_left_holding_a_deleted_speaker(tmp_path, rng):
    """The moved file's old cache, written back after the delete (a deleter that died
    before erasing it): check reports it, rebuild-index erases it."""
    path = tmp_path / "speakers.sqlite"
    with EnrollmentStore.open(path) as store:
        _enroll(store, ["alice", "bob"], rng)
        store.search(np.ones(16), 2, MODEL)
        store.save_index()
        held = (tmp_path / "speakers.sqlite.faiss").read_bytes()
        store.delete_speaker("alice")
    stray = tmp_path / "before-the-move.sqlite.faiss"
    stray.write_bytes(held)
    with EnrollmentStore.open(path) as store:
        report = check_store(store)
        assert not report.consistent
        assert any(str(stray) in p and "deleted" in p for p in report.problems), report.problems
        store.rebuild_index()
        assert not stray.exists() and check_store(store).consistent


def test_a_copied_sqlite_file_keeps_its_own_cache(tmp_path, rng):
    original, copy = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with EnrollmentStore.open(original) as store:
        _enroll(store, ["alice", "bob"], rng)
        _, alice = store.centroid("alice")
    shutil.copyfile(original, copy)
    with EnrollmentStore.open(copy) as twin:
        twin.search(np.ones(16), 2, MODEL)
    twin_cache = tmp_path / "b.sqlite.faiss"
    with EnrollmentStore.open(original) as store:
        assert store.other_cache_files() == []
        store.delete_speaker("alice")
        assert check_store(store).consistent
    assert alice.tobytes() in twin_cache.read_bytes()
    with EnrollmentStore.open(copy) as twin:
        assert twin.index_status().file_state == "current"
