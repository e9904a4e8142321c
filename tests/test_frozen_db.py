"""Databases frozen at the first schema revision (0001), written by the store code of that
time (tests/fixtures/make_frozen_db.py regenerates them), are upgraded by ``speakerdb db
upgrade`` with every row intact and then work: db check, verify, identify. SQLite from a
committed file, PostgreSQL from a committed pg_dump restored with psql."""

from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import by_speaker, require_data
from speakerdb.cli import cli
from speakerdb.storage._migrate import head_revision

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TABLES = {
    "models": "id, name, weights_sha256, dimension, default_threshold, created_at",
    "speakers": "id, name, metadata, status, centroid, utterance_count, speech_seconds, "
    "change_seq, created_at, updated_at",
    "utterances": "id, speaker_id, audio_sha256, source, duration, speech_seconds, embedding, "
    "model_id, created_at",
    "changes": "speaker_id, seq, op",
    "store_state": "id, instance_id, change_seq, model_id, created_at",
}
JOSE_NFD, JOSE_NFC = "Jose\u0301", "Jos\u00e9"
ZOE_NFC, ZOE_NFD = "Zo\u00eb", "Zoe\u0308"


def run(*argv: str):
    return CliRunner().invoke(cli, [*argv, "--json"])


def rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table the first revision had, as the database returns it."""
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            return {
                table: [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in conn.execute(text(f"SELECT {columns} FROM {table} ORDER BY 1"))
                ]
                for table, columns in TABLES.items()
            }
    finally:
        engine.dispose()


def upgraded_intact(url: str) -> None:
    before = rows(url)
    assert {row[1] for row in before["speakers"]} == {
        "p225", "p226", "p227", JOSE_NFD, ZOE_NFC, ZOE_NFD,
    }  # fmt: skip
    assert any(op == "delete" for _, _, op in before["changes"])
    result = run("db", "upgrade", "--db", url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"database": None} == {
        "database": None,
        "from": "0001",
        "to": head_revision(),
    }
    after = rows(url)
    # Every row as it was, but a name stored decomposed now composed (NFC) where that
    # spelling was free; the decomposed twin of an existing composed name stays as it was.
    renamed = {JOSE_NFD: JOSE_NFC}
    expected = [(i, renamed.get(name, name), *rest) for i, name, *rest in before["speakers"]]
    assert after["speakers"] == expected
    for table in ("models", "utterances", "changes", "store_state"):
        assert after[table] == before[table], table
    assert all(len(row[6]) == 4 * 256 for row in after["utterances"])  # embedding bytes

    check = run("db", "check", "--db", url)
    report = json.loads(check.stdout)
    assert check.exit_code == 0 and report["consistent"], report["problems"]
    assert report["revision"] == head_revision() and report["speakers"] == 6

    p225 = [str(p) for p in by_speaker("vctk")["p225"]]
    verified = run("verify", "p225", p225[5], p225[6], "--db", url)
    assert verified.exit_code == 0, verified.output
    assert all(v["accepted"] for v in json.loads(verified.stdout))
    identified = run("identify", p225[7], "--db", url)
    assert identified.exit_code == 0, identified.output
    assert json.loads(identified.stdout)["best"] == "p225"
    # Names: NFC or NFD typing finds José; each Zoë stays reachable by its exact spelling.
    for spelling in (JOSE_NFC, JOSE_NFD):
        shown = json.loads(run("speakers", "show", spelling, "--db", url).stdout)
        assert shown["name"] == JOSE_NFC and len(shown["recordings"]) == 1
    ids = {
        spelling: json.loads(run("speakers", "show", spelling, "--db", url).stdout)["id"]
        for spelling in (ZOE_NFC, ZOE_NFD)
    }
    assert ids[ZOE_NFC] != ids[ZOE_NFD]
    assert unicodedata.normalize("NFC", ZOE_NFD) == ZOE_NFC


def test_the_frozen_sqlite_database_upgrades_intact(tmp_path):
    require_data()
    path = tmp_path / "frozen.sqlite"
    shutil.copyfile(FIXTURES / "frozen-0001.sqlite", path)
    upgraded_intact(f"sqlite:///{path}")


def test_the_frozen_postgresql_dump_upgrades_intact(pg_url):
    require_data()
    if shutil.which("psql") is None:
        pytest.skip("psql (the PostgreSQL client) is not installed: cannot restore the dump")
    target = make_url(pg_url).set(drivername="postgresql")
    restored = subprocess.run(
        [
            "psql",
            "--quiet",
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(FIXTURES / "frozen-0001.postgresql.sql"),
            target.render_as_string(hide_password=False),
        ],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    upgraded_intact(pg_url)
