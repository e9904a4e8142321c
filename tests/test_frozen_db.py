"""Databases frozen at older schema revisions, written by the code of that time
(tests/fixtures/make_frozen_db.py regenerates them), are upgraded by ``speakerdb db upgrade``
with every row intact and then work: db check, verify, identify. SQLite from a committed
file, PostgreSQL from a committed pg_dump restored with psql.

Revision 0001: the first store. Revision 0003: the last before calibrated decisions, with a
threshold from `calibrate` and the answers that code gave: after the upgrade the database
keeps deciding exactly so (cosine against its threshold) until its owner opts in, then
switches to LLRs wherever the quality measures are known."""

from __future__ import annotations

import json
import math
import os
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


def restore(pg_url: str, dump: Path) -> None:
    """Load a plain pg_dump into the (empty) database at ``pg_url`` with psql."""
    if shutil.which("psql") is None:
        reason = "psql (the PostgreSQL client) is not installed: cannot restore the dump"
        if os.environ.get("SPEAKERDB_REQUIRE_PG") == "1":  # CI: a skip would hide the test
            pytest.fail(reason + " and SPEAKERDB_REQUIRE_PG=1")
        pytest.skip(reason)
    target = make_url(pg_url).set(drivername="postgresql")
    restored = subprocess.run(
        [
            "psql",
            "--quiet",
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(dump),
            target.render_as_string(hide_password=False),
        ],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr


def recorded_as_ge2e(url: str) -> None:
    """Revision 0006: a model recorded before it is the bundled GE2E, loaded by name."""
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            models = list(conn.execute(text("SELECT name, family, source FROM models")))
    finally:
        engine.dispose()
    assert [tuple(m) for m in models] == [("ge2e", "ge2e", None)]


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
    recorded_as_ge2e(url)

    check = run("db", "check", "--db", url)
    report = json.loads(check.stdout)
    assert check.exit_code == 0 and report["consistent"], report["problems"]
    assert report["revision"] == head_revision() and report["speakers"] == 6

    p225 = [str(p) for p in by_speaker("vctk")["p225"]]
    verified = run("verify", "p225", p225[5], p225[6], "--db", url)
    assert verified.exit_code == 0, verified.output
    assert all(v["accepted"] for v in json.loads(verified.stdout))
    # Created before calibrated decisions: the cosine against the model's threshold, as then.
    for v in json.loads(verified.stdout):
        assert v["decision_rule"]["text"] == "cosine >= 0.82 (model default)"
        assert v["llr"] is None and v["calibration"] is None and v["score"] == v["cosine"]
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
    restore(pg_url, FIXTURES / "frozen-0001.postgresql.sql")
    upgraded_intact(pg_url)


# --- revision 0003: the decisions stay those of that code until the owner opts in -------------

CALIBRATIONS_0003 = "normalization, threshold, note"


def rows_0003(url: str) -> dict[str, list[tuple]]:
    out = rows(url)
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            out["calibrations"] = [
                tuple(row)
                for row in conn.execute(text(f"SELECT {CALIBRATIONS_0003} FROM calibrations"))
            ]
            out["index_key"] = [tuple(conn.execute(text("SELECT index_key FROM store_state")))]
    finally:
        engine.dispose()
    return out


# The stored scores were computed on one machine; recomputed elsewhere GE2E's embeddings
# move by rounding only: at most 7.4e-8 over threads, oneDNN / ATen / oneMKL code paths and
# soxr engines (docs/parity.md). Decisions must be identical (every stored score is at least
# 0.012 from the threshold); scores agree within SCORE_SPREAD, about 100x the measured spread.
SCORE_SPREAD = 1e-5


def same_answers(url: str, data: Path, answers: dict) -> None:
    """verify / identify / compare answer as the revision-0003 code did, on the cosine rule
    with the database's calibrated threshold."""
    for old in answers["verify"]:
        result = run("verify", old["name"], str(data / old["file"]), "--db", url)
        doc = json.loads(result.stdout)
        assert result.exit_code == (0 if old["accepted"] else 1), result.output
        assert doc["accepted"] == old["accepted"] and doc["speaker"] == old["speaker"]
        assert doc["score"] == pytest.approx(old["score"], abs=SCORE_SPREAD)
        assert doc["threshold"] == pytest.approx(old["threshold"], abs=1e-12)
        assert doc["cosine"] == pytest.approx(doc["score"], abs=1e-12) and doc["llr"] is None
        rule = doc["decision_rule"]
        assert (rule["score"], rule["origin"], rule["calibration"]) == ("cosine", "database", None)
        assert rule["text"] == f"cosine >= {old['threshold']:.4g} (database threshold)"
    for old in answers["identify"]:
        doc = json.loads(run("identify", str(data / old["file"]), "-k", "3", "--db", url).stdout)
        assert doc["best"] == old["best"] and doc["llr"] is None
        assert [m["name"] for m in doc["matches"]] == [m["name"] for m in old["matches"]]
        for new, was in zip(doc["matches"], old["matches"], strict=True):
            assert new["score"] == pytest.approx(was["score"], abs=SCORE_SPREAD)
        assert doc["threshold"] == pytest.approx(old["threshold"], abs=1e-12)
    for old in answers["compare"]:
        a, b = str(data / old["a"]), str(data / old["b"])
        doc = json.loads(run("compare", a, b, "--db", url).stdout)
        assert doc["same_speaker"] == old["same_speaker"] and doc["llr"] is None
        assert doc["score"] == pytest.approx(old["score"], abs=SCORE_SPREAD)
        assert doc["threshold"] == pytest.approx(old["threshold"], abs=1e-12)


def upgraded_0003_keeps_deciding(url: str) -> None:
    data = require_data()
    answers = json.loads((FIXTURES / "frozen-0003.answers.json").read_text())
    before = rows_0003(url)
    assert before["calibrations"][0][:2] == ("none", answers["threshold"])
    result = run("db", "upgrade", "--db", url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["from"] == "0003"
    assert rows_0003(url) == before  # every row of revision 0003 as it was
    recorded_as_ge2e(url)
    same_answers(url, data, answers)
    show = json.loads(run("calibrate", "--show", "--db", url).stdout)
    assert show["default"] == "none" and show["calibration"] is None

    # One call may ask for a calibrated decision: files compared are measured now.
    old = answers["compare"][1]
    doc = json.loads(
        run(
            "compare", str(data / old["a"]), str(data / old["b"]), "--prior", "0.01", "--db", url
        ).stdout
    )
    assert doc["calibration"] == "bundled" and doc["llr"] is not None
    assert doc["threshold"] == pytest.approx(math.log(99))
    same_answers(url, data, answers)  # and nothing was stored

    # The owner opts in: LLRs wherever both sides' quality is known.
    result = run("calibrate", "--bundled", "--db", url)
    assert result.exit_code == 0, result.output
    doc = json.loads(run("compare", str(data / old["a"]), str(data / old["b"]), "--db", url).stdout)
    assert doc["calibration"] == "bundled" and doc["decision_rule"]["score"] == "llr"
    # Speakers enrolled before have no measured bandwidth: the cosine rule, with the
    # database's threshold, says why.
    first = answers["verify"][0]
    doc = json.loads(run("verify", first["name"], str(data / first["file"]), "--db", url).stdout)
    assert doc["llr"] is None and doc["accepted"] == first["accepted"]
    assert doc["threshold"] == pytest.approx(answers["threshold"])
    assert "bandwidth is unknown" in doc["decision_rule"]["note"]
    probe = answers["identify"][0]
    doc = json.loads(run("identify", str(data / probe["file"]), "--db", url).stdout)
    assert (
        doc["decision_rule"]["score"] == "cosine" and "candidates" in doc["decision_rule"]["note"]
    )
    assert doc["best"] == probe["best"]
    # Re-enrolled (replacing its recordings: the administrator's --force), a speaker is
    # calibrated.
    p225 = sorted((data / "vctk" / "p225").glob("*.wav"))
    result = run(
        "enroll", "p225", *map(str, p225[:3]), "--mode", "overwrite", "--force", "--db", url
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(run("verify", "p225", str(data / first["file"]), "--db", url).stdout)
    assert doc["calibration"] == "bundled" and doc["llr"] is not None and doc["accepted"]
    # --reset now returns to the bundled calibration (the database opted in).
    json.loads(run("calibrate", "--reset", "--db", url).stdout)
    doc = json.loads(run("verify", "p225", str(data / first["file"]), "--db", url).stdout)
    assert doc["calibration"] == "bundled"
    other = answers["verify"][2]
    doc = json.loads(run("verify", other["name"], str(data / other["file"]), "--db", url).stdout)
    assert doc["llr"] is None and doc["threshold"] == pytest.approx(0.82)  # reset: model's
    check = run("db", "check", "--db", url)
    assert check.exit_code == 0 and json.loads(check.stdout)["consistent"]


def test_a_frozen_0003_sqlite_database_keeps_deciding_until_opted_in(tmp_path):
    require_data()
    path = tmp_path / "frozen-0003.sqlite"
    shutil.copyfile(FIXTURES / "frozen-0003.sqlite", path)
    upgraded_0003_keeps_deciding(f"sqlite:///{path}")


def test_a_frozen_0003_postgresql_database_keeps_deciding_until_opted_in(pg_url):
    require_data()
    restore(pg_url, FIXTURES / "frozen-0003.postgresql.sql")
    upgraded_0003_keeps_deciding(pg_url)


# --- one database per schema revision (tools/make_frozen_revisions.py writes them) -------------

FROZEN = FIXTURES / "frozen"
RECORDED = json.loads((FROZEN / "answers.json").read_text())
REVISIONS = [f"{n:04d}" for n in range(1, int(head_revision()) + 1)]


def vectors(path: Path) -> dict[str, list[bytes]]:
    """Each speaker's centroid and utterance embeddings, as stored."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            out: dict[str, list[bytes]] = {}
            for name, centroid, embedding in conn.execute(
                text(
                    "SELECT s.name, s.centroid, u.embedding FROM speakers s "
                    "JOIN utterances u ON u.speaker_id = s.id ORDER BY s.name, u.id"
                )
            ):
                out.setdefault(name, [bytes(centroid)]).append(bytes(embedding))
            return out
    finally:
        engine.dispose()


def test_there_is_a_frozen_database_at_every_revision():
    # A new migration needs its frozen database: rerun tools/make_frozen_revisions.py.
    assert sorted(p.stem for p in FROZEN.glob("*.db")) == REVISIONS
    assert sorted(RECORDED) == REVISIONS


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_database_frozen_at_each_revision_upgrades_and_answers_as_recorded(tmp_path, revision):
    from frozen_answers import answers

    path = tmp_path / f"{revision}.db"
    shutil.copyfile(FROZEN / f"{revision}.db", path)
    before = vectors(path)
    got = answers(f"sqlite:///{path}")
    assert got["from"] == revision and got["to"] == head_revision()
    assert vectors(path) == before  # every voiceprint byte kept
    assert got == RECORDED[revision]
    # Real voices: each speaker's own recording is accepted, every other speaker refused.
    names = [name for name, _ in got["speakers"]]
    assert got["decisions"] == {p: {c: p == c for c in names} for p in names}


def test_every_frozen_revision_gives_the_same_answers():
    """The same rows in every schema: the upgraded databases agree on speakers and on every
    decision (the rule differs: calibrated decisions began at revision 0004)."""
    first = RECORDED[REVISIONS[0]]
    for revision in REVISIONS[1:]:
        assert RECORDED[revision]["speakers"] == first["speakers"], revision
        assert RECORDED[revision]["decisions"] == first["decisions"], revision
