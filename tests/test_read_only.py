"""Commands that only read never write: no database is created, migrated or changed by
verify, identify, compare, eval, speakers list/show and db check -- except that a lookup
(verify, identify) appends its audit entry to a database that can be written -- and they work
on a database that cannot be written (a read-only file, a read-only folder).

Tests run as root, whom permission bits do not stop: read-only files and folders are made
with the immutable attribute (``chattr +i``), which binds root too. Where it is unavailable
(another file system, no CAP_LINUX_IMMUTABLE) those tests skip with the reason."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from helpers import by_speaker, require_data
from speakerdb.cli import cli


def run(argv: list[str], env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli, argv)


def state(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its contents."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` (a file or a folder) cannot be changed, created in or removed from, by root
    either, for the duration of the block."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def voices():
    require_data()
    return {name: [str(p) for p in files] for name, files in by_speaker("vctk").items()}


@pytest.fixture
def enrolled(tmp_path, voices):
    """A SQLite database with two speakers, in a folder of its own."""
    folder = tmp_path / "db"
    folder.mkdir()
    db = str(folder / "speakers.sqlite")
    for name in ("p225", "p226"):
        result = run(["enroll", name, *voices[name][:3], "--db", db])
        assert result.exit_code == 0, result.output
    return folder, db


def read_commands(db: str, voices: dict[str, list[str]]) -> list[tuple[list[str], int]]:
    """(argv, expected exit status) of every reading command."""
    genuine, other = voices["p225"][5], voices["p225"][6]
    return [
        (["speakers", "list", "--db", db, "--json"], 0),
        (["speakers", "show", "p225", "--db", db, "--json"], 0),
        (["verify", "p225", genuine, "--db", db, "--json"], 0),
        (["identify", genuine, "--db", db, "--json"], 0),
        (["compare", genuine, other, "--db", db, "--json"], 0),
        (["db", "check", "--db", db, "--json"], 0),
    ]


def run_all(commands: list[tuple[list[str], int]]) -> None:
    for argv, status in commands:
        result = run(argv)
        assert result.exit_code == status, (argv, result.output)
        json.loads(result.stdout)


def tables(db: str) -> dict[str, list[tuple]]:
    """Every row of every table, by table."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return {
                name: [tuple(r) for r in conn.execute(text(f'SELECT * FROM "{name}"'))]
                for name in inspect(conn).get_table_names()
            }
    finally:
        engine.dispose()


def test_reading_changes_nothing_in_a_writable_folder(enrolled, voices):
    folder, db = enrolled
    run(["identify", voices["p226"][5], "--db", db])  # the index cache file exists from now on
    before, rows = state(folder), tables(db)
    run_all(read_commands(db, voices))
    after = state(folder)
    # No -wal/-shm or other file left behind, the index cache untouched ...
    assert sorted(after) == sorted(before)
    assert {f: h for f, h in after.items() if f != "speakers.sqlite"} == {
        f: h for f, h in before.items() if f != "speakers.sqlite"
    }
    # ... and in the database only the lookups' audit entries (verify, identify) are new.
    now = tables(db)
    audit = {"audit_log", "audit_head"}
    assert {t: r for t, r in now.items() if t not in audit} == {
        t: r for t, r in rows.items() if t not in audit
    }
    added = now["audit_log"][len(rows["audit_log"]) :]
    assert now["audit_log"][: len(rows["audit_log"])] == rows["audit_log"]
    assert [(r[3], r[4], r[5]) for r in added] == [
        ("verify", "p225", "accept"),
        ("identify", "p225", "identified"),
    ]


def test_reading_a_read_only_database_file(enrolled, voices):
    folder, db = enrolled
    run(["identify", voices["p226"][5], "--db", db])  # the index cache file exists from now on
    before = state(folder)
    with immutable(Path(db)):
        run_all(read_commands(db, voices))
        result = run(["speakers", "delete", "p226", "--yes", "--db", db, "--json"])
        assert result.exit_code == 2  # writing is refused with an error, not a traceback
        assert "read-only" in json.loads(result.stdout)["error"]["message"]
    assert state(folder) == before  # and no -wal/-shm left beside it


def test_reading_in_a_read_only_folder(enrolled, voices):
    folder, db = enrolled
    before = state(folder)
    with immutable(folder):
        run_all(read_commands(db, voices))
    assert state(folder) == before


def test_reading_a_read_only_folder_without_an_index_file(enrolled, voices):
    """Nothing can be saved: identify builds its index in memory and says nothing of it."""
    folder, db = enrolled
    for cache in folder.glob("*.faiss"):
        cache.unlink()
    with immutable(folder):
        result = run(["identify", voices["p226"][5], "--db", db, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["best"] == "p226"
    assert not list(folder.glob("*.faiss"))


@pytest.mark.parametrize(
    "argv",
    [
        ["speakers", "list"],
        ["speakers", "show", "p225"],
        ["verify", "p225", "{probe}"],
        ["identify", "{probe}"],
        ["db", "check"],
    ],
)
def test_a_missing_database_is_an_error_for_commands_that_need_one(tmp_path, voices, argv):
    db = tmp_path / "nothing-here.sqlite"
    argv = [a.format(probe=voices["p225"][0]) for a in argv]
    result = run([*argv, "--db", str(db), "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "database_not_found", error
    assert "does not exist" in error["message"]
    assert list(tmp_path.iterdir()) == []


def test_compare_and_eval_without_a_database_create_none(tmp_path, voices):
    home = tmp_path / "xdg"
    home.mkdir()
    env = {"XDG_DATA_HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
    genuine, impostor = voices["p225"][4], voices["p226"][4]
    result = run(["compare", voices["p225"][3], genuine, "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["same_speaker"] is True
    # No database: decided like a new one, with the model's bundled calibration at ln 99.
    assert document["decision_rule"]["score"] == "llr" and document["calibration"] == "bundled"
    assert document["threshold"] == pytest.approx(math.log(99))
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {voices['p225'][3]} {genuine}\n0 {voices['p225'][3]} {impostor}\n")
    result = run(["eval", str(trials), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trials"] == 2
    assert state(home) == {}
    # And as a real process (the installed entry point).
    process = subprocess.run(
        [sys.executable, "-m", "speakerdb", "compare", genuine, impostor],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert process.returncode == 1, process.stderr
    assert process.stdout.startswith("DIFFERENT")
    assert state(home) == {}


def test_asnorm_against_enrolled_speakers_needs_a_database(tmp_path, voices):
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = run(
        ["compare", voices["p225"][3], voices["p225"][4], "--norm", "asnorm", "--json"], env=env
    )
    assert result.exit_code == 2
    assert "--cohort" in json.loads(result.stdout)["error"]["message"]
    assert not (tmp_path / "xdg").exists()


def test_postgresql_reads_in_read_only_sessions_and_creates_nothing(pg_url, voices):
    result = run(["speakers", "list", "--db", pg_url, "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "database_not_found"
    engine = create_engine(make_url(pg_url))
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == []  # no schema was created
    engine.dispose()
    for name in ("p225", "p226"):
        assert run(["enroll", name, *voices[name][:3], "--db", pg_url]).exit_code == 0
    run_all(read_commands(pg_url, voices))
    from speakerdb.storage._store import EnrollmentStore

    with EnrollmentStore.open(pg_url, read_only=True) as store:
        with store.engine.connect() as conn:
            # Enforced by the server, whatever a code path might try.
            assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
        assert [s.name for s in store.speakers()] == ["p225", "p226"]
