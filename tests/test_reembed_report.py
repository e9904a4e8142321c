"""Issue 16, defect 18 (re-embedding's part): ``db reembed`` reports the recordings the
switching transaction really switched, not the count it started with, when others enroll
and delete while it runs. SQLite and PostgreSQL, real speech, the small NeMo fixture as the
new model; the concurrent changes are made from the run's own progress callback (after a
committed batch), so nothing depends on timing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import by_speaker, require_data
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.cli._db import _print_reembed

NEMO = Path(__file__).resolve().parent / "fixtures" / "models" / "nemo" / "titanet-small.nemo"


def _recordings(url: str) -> int:
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM utterances")).scalar_one())
    finally:
        engine.dispose()


def test_reembed_reports_what_the_switch_kept_after_a_concurrent_enroll_and_delete(db_url, capsys):
    require_data()
    speech = by_speaker("vctk")
    with SpeakerDB.open(db_url, model="ge2e", device="cpu") as db:
        for name in ("p225", "p226", "p227"):
            db.enroll(name, speech[name][:4])
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 1:  # another client, while the first batch is committed
            with SpeakerDB.open(db_url, device="cpu") as other:
                other.delete("p226")
                assert other.enroll("p225", speech["p225"][6:8]).accepted == 2

    with SpeakerDB.open(db_url, device="cpu") as db:
        report = db.reembed(NEMO, progress=progress, commit_every=2)
    assert report.switched, report
    assert report.recordings == 12  # when it started
    assert _recordings(db_url) == 10
    _print_reembed(report)  # what `speakerdb db reembed` prints
    printed = capsys.readouterr().out
    assert ": 10 recordings (" in printed, printed
    assert report.switched_recordings == 10 and report.to_dict()["switched_recordings"] == 10
    check = CliRunner().invoke(cli, ["db", "check", "--json", "--db", db_url])
    assert check.exit_code == 0 and json.loads(check.stdout)["utterances"] == 10


def test_a_plain_switch_reports_every_recording(sqlite_url):
    require_data()
    speech = by_speaker("vctk")
    with SpeakerDB.open(sqlite_url, model="ge2e", device="cpu") as db:
        db.enroll("p225", speech["p225"][:3])
    result = CliRunner().invoke(
        cli, ["db", "reembed", "--model", str(NEMO), "--db", sqlite_url, "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["switched_recordings"] == document["recordings"] == 3
