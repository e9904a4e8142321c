"""Issue 16, defect 2: an identity cannot be taken over by enrolling someone else into it.

The speaker "bob" is enrolled from four recordings of VCTK p225; the intruder is VCTK p228
(another woman's voice). Appending the intruder's recordings is refused -- checked against
bob's voiceprint as it was before the request, with the database's decision rule -- and
nothing of the request is stored; overwriting needs the administrator's ``force``. Python
and CLI on SQLite and PostgreSQL (HTTP: tests/test_service_store_safety.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import by_speaker, require_data
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.errors import SpeakerDBError, UsageError
from speakerdb.storage._store import EnrollmentStore


@pytest.fixture(scope="module")
def voices():
    require_data()
    groups = by_speaker("vctk")
    return groups["p225"], groups["p228"], groups["p227"]


def state(url: str) -> tuple:
    """bob's recordings (their audio sha256), voiceprint bytes and metadata."""
    with EnrollmentStore.open(url, read_only=True) as store:
        record, centroid = store.centroid("bob")
        hashes = tuple(u.sha256 for u in store.utterances("bob"))
        return hashes, centroid.tobytes(), record.metadata


def refused(call) -> SpeakerDBError:
    with pytest.raises(SpeakerDBError) as caught:
        call()
    assert caught.value.code == "enrollment_refused", caught.value
    return caught.value


def test_appending_another_voice_is_refused_and_stores_nothing(db_url, model, voices):
    bob, intruder, _ = voices
    with SpeakerDB.open(db_url, model=model) as db:
        db.enroll("bob", bob[:4], metadata={"owner": "bob"})
        before = state(db_url)

        error = refused(lambda: db.enroll("bob", intruder[:5], metadata={"owner": "mallory"}))
        report = error.report
        assert report.refused == 5 and not report.changed and report.utterances == 4
        assert {i.reason for i in report.inputs} == {"voiceprint_mismatch"}
        assert all("does not match" in i.message for i in report.inputs)
        assert state(db_url) == before

        # One intruder among genuine recordings: the whole request is refused.
        error = refused(lambda: db.enroll("bob", [bob[4], intruder[5]]))
        assert [i.reason for i in error.report.inputs] == [
            "refused_with_request",
            "voiceprint_mismatch",
        ]
        assert state(db_url) == before

        # bob is still bob.
        assert db.verify("bob", bob[6]).accepted
        assert not db.verify("bob", intruder[6]).accepted

        # More of bob's own voice goes in.
        report = db.enroll("bob", bob[4:6])
        assert report.accepted == 2 and report.utterances == 6 and report.refused == 0


def test_overwrite_needs_force(db_url, model, voices):
    bob, intruder, _ = voices
    with SpeakerDB.open(db_url, model=model) as db:
        db.enroll("bob", bob[:3])
        before = state(db_url)
        with pytest.raises(UsageError, match="force"):
            db.enroll("bob", intruder[:3], mode="overwrite")
        assert state(db_url) == before
        # The administrator's override: replace, and append without the check.
        report = db.enroll("bob", intruder[:3], mode="overwrite", force=True)
        assert report.changed and report.utterances == 3
        report = db.enroll("bob", bob[:2], force=True)
        assert report.accepted == 2 and report.utterances == 5


def test_a_manifest_appending_another_voice_refuses_that_speaker_only(
    db_url, model, voices, tmp_path
):
    bob, intruder, carol = voices
    with SpeakerDB.open(db_url, model=model) as db:
        db.enroll("bob", bob[:4])
        before = state(db_url)
        lines = [{"audio_filepath": str(p), "label": "bob"} for p in intruder[:5]]
        lines += [{"audio_filepath": str(p), "label": "carol"} for p in carol[:3]]
        manifest = tmp_path / "m.jsonl"
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        from speakerdb import read_manifest

        summary = db.enroll_manifest(read_manifest(manifest))
        reports = {r.speaker: r for r in summary.reports}
        assert reports["bob"].refused == 5 and not reports["bob"].changed
        assert reports["bob"].utterances == 4
        assert reports["carol"].created and reports["carol"].accepted == 3
        assert summary.refused == 5 and summary.totals()["refused"] == 5
        assert state(db_url) == before
        with pytest.raises(UsageError, match="force"):
            db.enroll_manifest(read_manifest(manifest), mode="overwrite")
    result = CliRunner().invoke(cli, ["enroll", "--manifest", str(manifest), "--db", db_url])
    assert result.exit_code == 2 and "refused to add 5 recordings" in result.stderr
    assert state(db_url) == before


def test_cli_refuses_a_takeover_unless_forced(db_url, voices):
    bob, intruder, _ = voices

    def run(*argv: str):
        return CliRunner().invoke(cli, [*argv, "--db", db_url])

    assert run("enroll", "bob", *map(str, bob[:4])).exit_code == 0
    before = state(db_url)
    result = run("enroll", "bob", *map(str, intruder[:5]), "--json")
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    assert document["error"]["code"] == "enrollment_refused" and document["refused"] == 5
    assert "not added to bob" in result.stderr and "Traceback" not in result.output
    result = run("enroll", "bob", *map(str, intruder[:3]), "--mode", "overwrite")
    assert result.exit_code == 2 and "force" in result.stderr
    assert state(db_url) == before
    result = run("enroll", "bob", *map(str, intruder[:3]), "--mode", "overwrite", "--force")
    assert result.exit_code == 0, result.output
    assert len(state(db_url)[0]) == 3
