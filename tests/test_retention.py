"""Retention, consent and opt-out on real SQLite files and a real PostgreSQL server: expiry
and opt-out erase through delete's path and leave no byte of the voice behind (the checks
of test_store_privacy), consent is recorded and can be required, an opted-out name is
refused until lifted, and each of these is audited."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from test_store_privacy import _data_directory, _relation_bytes

from helpers import by_speaker, fake_model, fake_utterance, require_data
from speakerdb import acting_as
from speakerdb.cli import cli
from speakerdb.errors import ConsentRequiredError, NotFoundError, OptedOutError, UsageError
from speakerdb.storage._governance import parse_duration
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model(64)
NOW = dt.datetime.now(dt.UTC)


def enroll(store, name, rng, **kw):
    utterances = [fake_utterance(rng, dimension=64) for _ in range(3)]
    store.enroll(EnrollRequest(name, utterances, **kw), MODEL)
    return [u.embedding.tobytes() for u in utterances]


def test_retention_periods():
    assert parse_duration("3y") == dt.timedelta(days=3 * 365)
    assert parse_duration(" 90D ") == dt.timedelta(days=90)
    assert parse_duration("2w") == dt.timedelta(days=14)
    assert parse_duration("12h") == dt.timedelta(hours=12)
    for bad in ("0d", "3", "y", "-1d", "3 months", "1.5y"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_consent_and_expiry_are_recorded(db_url):
    rng = np.random.default_rng(0)
    with EnrollmentStore.open(db_url) as store:
        with acting_as("clerk"):
            enroll(store, "ann", rng, consent="signed form 42", expires_at=NOW + dt.timedelta(1))
        enroll(store, "ben", rng)
        ann, ben = store.speaker("ann"), store.speaker("ben")
        assert ann.consent == "signed form 42" and ann.consent_by == "clerk"
        assert ann.consent_at is not None and abs(ann.consent_at - NOW) < dt.timedelta(hours=1)
        assert ann.expires_at == NOW + dt.timedelta(1)
        assert ben.expires_at is None and ben.consent is None
        # Appending without them keeps them; giving them replaces them.
        enroll(store, "ann", rng)
        assert store.speaker("ann").consent == "signed form 42"
        enroll(store, "ann", rng, consent="renewed")
        assert store.speaker("ann").consent == "renewed"
        document = store.speaker("ann").to_dict()
        assert document["consent"] == "renewed" and document["expires_at"].startswith("20")
        with pytest.raises(UsageError):
            enroll(store, "cat", rng, consent=" ")


def test_consent_can_be_required(db_url):
    rng = np.random.default_rng(1)
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "old", rng)
        store.set_require_consent(True)
        assert store.require_consent()
        with pytest.raises(ConsentRequiredError):
            enroll(store, "new", rng)
        assert [s.name for s in store.speakers()] == ["old"]  # refused: nothing stored
        enroll(store, "old", rng)  # an enrolled speaker may get more recordings
        enroll(store, "new", rng, consent="recorded on the call")
        store.set_require_consent(False)
        enroll(store, "free", rng)
        settings = store.audit_entries(action="setting")
    assert [e.detail for e in settings] == [{"require_consent": True}, {"require_consent": False}]


def _no_trace_sqlite(folder, secrets: list[bytes]) -> None:
    blobs = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    assert not any(secret in blobs for secret in secrets)


def test_expiry_erases_like_delete_and_leaves_no_trace_in_sqlite_files(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "r.sqlite"
    with EnrollmentStore.open(path) as store:
        gone = enroll(store, "gone", rng, expires_at=NOW - dt.timedelta(seconds=1))
        later = enroll(store, "later", rng, expires_at=NOW + dt.timedelta(days=30))
        enroll(store, "kept", rng)
        store.search(np.ones(64), 3, MODEL)  # the index cache file holds every centroid
        _, centroid = store.centroid("gone")
        gone.append(centroid.tobytes())
    result = CliRunner().invoke(cli, ["db", "expire", "--db", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"expired": ["gone"]}
    _no_trace_sqlite(tmp_path, gone)
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert any(vector in blobs for vector in later)  # the check can fail: others are there
    with EnrollmentStore.open(path) as store:
        assert [s.name for s in store.speakers()] == ["kept", "later"]
        assert [c.name for c in store.search(np.ones(64), 5, MODEL)[0]] != []
        assert "gone" not in [c.name for c in store.search(np.ones(64), 5, MODEL)[0]]
        entries = store.audit_entries(action="expire")
        assert [(e.speaker, e.decision) for e in entries] == [("gone", "erased")]
        assert store.expire(NOW + dt.timedelta(days=31)) == ["later"]
        assert store.audit_verify().ok
    again = CliRunner().invoke(cli, ["db", "expire", "--db", str(path)])
    assert again.exit_code == 0 and "no speaker has expired" in again.output


def test_expiry_and_opt_out_leave_no_trace_in_postgresql_files(pg_url, pg_admin):
    from speakerdb import SpeakerDB

    data_dir = _data_directory(pg_admin)
    rng = np.random.default_rng(3)
    with EnrollmentStore.open(pg_url) as store:
        enroll(store, "alice", rng)
        expired = enroll(store, "eve", rng, expires_at=NOW - dt.timedelta(seconds=1))
        opted = enroll(store, "otto", rng)
        expired.append(store.centroid("eve")[1].tobytes())
        opted.append(store.centroid("otto")[1].tobytes())
    with SpeakerDB.open(pg_url) as db:
        assert db.expire(compact=False) == ["eve"]
        assert db.opt_out("otto", compact=False) is True
    engine = create_engine(make_url(pg_url))
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM"))
        # Erased as delete erases: the bytes stay in PostgreSQL's files until compacted (so
        # the check below can fail) ...
        _, heap = _relation_bytes(engine, data_dir, "utterances")
        assert any(secret in heap for secret in expired + opted)
        # ... which is what ``db expire`` and ``speakers opt-out`` run afterwards.
        result = CliRunner().invoke(cli, ["db", "compact", "--db", pg_url, "--json"])
        assert result.exit_code == 0, result.output
        for table in ("utterances", "speakers"):
            _, heap = _relation_bytes(engine, data_dir, table)
            assert heap, f"{table} is empty on disk: the test would prove nothing"
            assert not any(secret in heap for secret in expired + opted), table
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT name_hmac FROM opt_outs")).scalars().all()
            logged = conn.execute(text("SELECT speaker, detail FROM audit_log")).all()
    finally:
        engine.dispose()
    assert len(kept) == 1 and "otto" not in kept[0]
    # The opt-out's own entry names only the keyed hash.
    assert any(row.detail and kept[0] in row.detail for row in logged)
    assert not any(row.speaker == "otto" and "opt" in (row.detail or "") for row in logged)


def test_opt_out_refuses_the_name_until_lifted(db_url):
    rng = np.random.default_rng(4)
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "Olivia", rng)
        assert store.opt_out("Olivia") is True
        assert store.speakers() == []
        for form in ("Olivia", "olivia", "OLIVIA"):
            with pytest.raises(OptedOutError):
                enroll(store, form, rng)
        assert store.opt_out("nobody-yet") is False  # refused before ever enrolled
        with pytest.raises(OptedOutError):
            enroll(store, "nobody-yet", rng)
        with pytest.raises(NotFoundError):
            store.opt_in("someone-else")
        store.opt_in("olivia")
        enroll(store, "Olivia", rng)
        actions = [(e.action, e.decision) for e in store.audit_entries()]
        assert store.audit_verify().ok
    assert actions == [
        ("enroll", "created"),
        ("opt-out", "erased"),
        ("opt-out", "recorded"),
        ("opt-in", "lifted"),
        ("enroll", "created"),
    ]


def test_governance_through_the_cli_with_real_speech(db_url, tmp_path):
    require_data()
    files = [str(p) for p in sorted(by_speaker("vctk")["p225"])[:2]]
    runner = CliRunner()

    def run(*argv: str):
        return runner.invoke(cli, [*argv, "--db", db_url])

    assert run("db", "set", "require-consent", "on").exit_code == 0
    refused = run("enroll", "p225", *files)
    assert refused.exit_code == 2 and "requires consent" in refused.output
    made = run("enroll", "p225", *files, "--consent", "verbal, call 7", "--expires-after", "3y")
    assert made.exit_code == 0, made.output
    listed = run("speakers", "list")
    assert "expires 20" in listed.output and "consent recorded" in listed.output
    shown = runner.invoke(cli, ["speakers", "show", "p225", "--db", db_url, "--json"])
    document = json.loads(shown.stdout)
    assert document["consent"] == "verbal, call 7"
    expires = dt.datetime.fromisoformat(document["expires_at"])
    assert abs(expires - (NOW + dt.timedelta(days=3 * 365))) < dt.timedelta(hours=1)
    bad = run("enroll", "p226", *files, "--consent", "x", "--expires-after", "forever")
    assert bad.exit_code == 2 and "retention period" in bad.output
    out = run("speakers", "opt-out", "p225", "--yes")
    assert out.exit_code == 0 and "erased and opted out" in out.output
    again = run("enroll", "P225", *files, "--consent", "again")
    assert again.exit_code == 2 and "opted out" in again.output
    assert run("speakers", "opt-in", "p225").exit_code == 0
    assert run("enroll", "p225", *files, "--consent", "again").exit_code == 0
    log = runner.invoke(cli, ["audit", "list", "--db", db_url, "--json"])
    actions = [e["action"] for e in json.loads(log.stdout)]
    assert actions == ["setting", "enroll", "opt-out", "opt-in", "enroll"]


def test_the_service_erases_what_fell_due_at_start(tmp_path):
    """``serve`` runs a retention pass before it is ready (and then every --expire-every
    seconds): a voiceprint whose retention ended while the server was down is erased,
    audited, before the first request; one still in its period stays."""
    import os

    from service_helpers import Server
    from speakerdb import SpeakerDB

    require_data()
    groups = by_speaker("vctk")
    url = f"sqlite:///{tmp_path / 'served.sqlite'}"
    with SpeakerDB.open(url) as db:
        db.enroll("gone", groups["p225"][:2], expires_after="1d")
        db.enroll("kept", groups["p226"][:2], expires_after="30d")
    engine = create_engine(url)
    with engine.begin() as conn:  # the day has passed while the server was down
        conn.execute(
            text("UPDATE speakers SET expires_at = :past WHERE name = 'gone'"),
            {"past": NOW - dt.timedelta(hours=1)},
        )
    engine.dispose()
    env = {**os.environ, "SPEAKERDB_INDEX_DIR": str(tmp_path / "ix")}
    with Server(url, "--expire-every", "3600", env=env) as server, server.client() as client:
        listed = client.get("/v1/speakers")
    assert listed.status_code == 200, listed.text
    assert [s["name"] for s in listed.json()] == ["kept"]
    with SpeakerDB.open(url) as db:
        assert [e.speaker for e in db.audit_entries(action="expire")] == ["gone"]
        assert db.audit_verify().ok


def test_expiry_runs_every_interval_until_cancelled():
    import asyncio

    from speakerdb.service import expire_periodically

    async def main() -> int:
        calls = 0
        loop = asyncio.get_running_loop()
        second = asyncio.Event()

        def expire() -> int:  # runs in a worker thread
            nonlocal calls
            calls += 1
            if calls == 2:
                loop.call_soon_threadsafe(second.set)
            return 0

        task = loop.create_task(expire_periodically(expire, 0.01))
        await asyncio.wait_for(second.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return calls

    assert asyncio.run(main()) >= 2


def test_a_manifest_carries_consent_and_retention_per_speaker(db_url, tmp_path):
    """``enroll --manifest`` takes "consent" and "expires_after" per line for the line's
    speaker: recorded as enroll --consent / --expires-after record them, required-consent
    satisfied by them; lines of one speaker that disagree, or a bad period, are refused
    naming the line, and nothing is enrolled."""
    require_data()
    groups = by_speaker("vctk")
    runner = CliRunner()

    def run(*argv: str):
        return runner.invoke(cli, [*argv, "--db", db_url])

    def manifest(lines: list[dict], name: str = "m.jsonl") -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return str(path)

    p225, p226 = groups["p225"][:2], groups["p226"][:2]
    consent = {"label": "p225", "consent": "signed form 42"}
    lines = [
        {"audio_filepath": str(p225[0]), **consent, "expires_after": "90d"},
        {"audio_filepath": str(p225[1]), **consent},
        {"audio_filepath": str(p226[0]), "label": "p226", "consent": "verbal"},
        {"audio_filepath": str(p226[1]), "label": "p226"},
    ]
    clash = [lines[0], {**lines[1], "consent": "another form"}]
    refused = run("enroll", "--manifest", manifest(clash, "clash.jsonl"))
    assert refused.exit_code == 2 and "clash.jsonl:2" in refused.output
    assert '"consent" differs from line 1' in refused.output
    bad = [{**lines[0], "expires_after": "forever"}]
    refused = run("enroll", "--manifest", manifest(bad, "bad.jsonl"))
    assert refused.exit_code == 2 and "bad.jsonl:1" in refused.output
    assert run("db", "set", "require-consent", "on").exit_code == 0
    listed = json.loads(run("speakers", "list", "--json").stdout)
    assert listed == []
    made = run("enroll", "--manifest", manifest(lines))
    assert made.exit_code == 0, made.output
    shown = {
        name: json.loads(run("speakers", "show", name, "--json").stdout)
        for name in ("p225", "p226")
    }
    assert shown["p225"]["consent"] == "signed form 42" and shown["p226"]["consent"] == "verbal"
    expires = dt.datetime.fromisoformat(shown["p225"]["expires_at"])
    assert abs(expires - (dt.datetime.now(dt.UTC) + dt.timedelta(days=90))) < dt.timedelta(hours=1)
    assert shown["p226"]["expires_at"] is None


def test_a_tenant_default_retention_dates_new_speakers(db_url):
    """``db set default-expires-after 3y``: a new speaker of the tenant enrolled without an
    expiry gets now + 3y (an explicit one wins; speakers enrolled before keep theirs; other
    tenants are untouched); a bad period changes nothing; ``off`` removes the default."""
    require_data()
    groups = by_speaker("vctk")
    runner = CliRunner()

    def run(*argv: str):
        return runner.invoke(cli, [*argv, "--db", db_url])

    def expiry(name: str, *tenant: str):
        shown = json.loads(run("speakers", "show", name, "--json", *tenant).stdout)
        return (
            None if shown["expires_at"] is None else dt.datetime.fromisoformat(shown["expires_at"])
        )

    def near(moment, days: int) -> bool:
        return abs(moment - (dt.datetime.now(dt.UTC) + dt.timedelta(days=days))) < dt.timedelta(
            hours=1
        )

    files = {name: [str(p) for p in groups[name][:2]] for name in ("p225", "p226", "p227")}
    assert run("enroll", "p225", *files["p225"]).exit_code == 0
    made = run("db", "set", "default-expires-after", "3y", "--json")
    assert made.exit_code == 0 and json.loads(made.stdout) == {"default_expires_after": "3y"}
    bad = run("db", "set", "default-expires-after", "forever")
    assert bad.exit_code == 2 and "retention period" in bad.output
    assert run("enroll", "p226", *files["p226"]).exit_code == 0
    assert run("enroll", "p227", *files["p227"], "--expires-after", "90d").exit_code == 0
    assert run("enroll", "p228", *files["p226"], "--tenant", "other").exit_code == 0
    assert expiry("p225") is None  # enrolled before the default
    assert near(expiry("p226"), 3 * 365) and near(expiry("p227"), 90)
    assert expiry("p228", "--tenant", "other") is None
    assert run("db", "set", "default-expires-after", "off").exit_code == 0
    assert run("enroll", "p229", *files["p225"]).exit_code == 0
    assert expiry("p229") is None
    log = json.loads(run("audit", "list", "--json").stdout)
    settings = [e["detail"] for e in log if e["action"] == "setting"]
    assert settings == [{"default_expires_after": "3y"}, {"default_expires_after": None}]
