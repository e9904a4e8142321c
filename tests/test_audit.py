"""The audit log on real SQLite files and a real PostgreSQL server: every change writes one
entry in its own transaction, lookups one each after the decision, the hash chain reveals
any single modified, deleted, inserted or reordered entry, and concurrent writers never
fork it."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, insert, select, text

from helpers import fake_model, fake_utterance
from speakerdb import acting_as
from speakerdb.cli import cli
from speakerdb.errors import SpeakerNotFoundError, UsageError
from speakerdb.storage._audit import PendingEntry, entry_hash
from speakerdb.storage._records import CalibrationSetting, EnrollRequest
from speakerdb.storage._schema import AuditEntryRow
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


def enroll(store, name, rng, n=2):
    return store.enroll(EnrollRequest(name, [fake_utterance(rng) for _ in range(n)]), MODEL)


def test_every_change_writes_one_entry_in_its_transaction(db_url):
    rng = np.random.default_rng(0)
    with EnrollmentStore.open(db_url) as store:
        with acting_as("alice", "req-1"):
            enroll(store, "bob", rng)
            enroll(store, "bob", rng)
            store.rename_speaker("bob", "robert")
            store.set_calibration(CalibrationSetting("none", "threshold", threshold=0.7))
            store.clear_calibration()
            made = store.create_key("robot", ["audit"])
            store.revoke_key("robot")
            store.delete_speaker("robert")
        # A refused change writes nothing: the entry is part of the change's transaction.
        with pytest.raises(SpeakerNotFoundError):
            store.delete_speaker("nobody")
        entries = store.audit_entries()
        check = store.audit_verify()
    assert [(e.action, e.speaker, e.decision) for e in entries] == [
        ("enroll", "bob", "created"),
        ("enroll", "bob", "updated"),
        ("rename", "bob", "renamed"),
        ("calibration", None, "set"),
        ("calibration", None, "reset"),
        ("key-create", None, "created"),
        ("key-revoke", None, "revoked"),
        ("delete", "robert", "deleted"),
    ]
    assert [e.seq for e in entries] == list(range(1, 9))
    assert {(e.actor, e.request_id) for e in entries} == {("alice", "req-1")}
    assert entries[2].detail == {"new_name": "robert"}
    assert entries[5].detail == {"key": "robot", "scopes": ["audit"]}
    # Never key material, embeddings or paths.
    stored = json.dumps([e.to_dict() for e in entries])
    assert made.secret not in stored and made.record.prefix not in stored
    assert "/audio/" not in stored
    assert check.ok and check.entries == 8 and check.head_hash == entries[-1].hash


def test_lookups_are_recorded_with_the_os_user_by_default(db_url):
    import getpass

    rng = np.random.default_rng(1)
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "carol", rng)
        store.record_lookups(
            [PendingEntry("verify", speaker="carol", decision="accept", score=0.91)]
        )
        store.record_lookups([])  # nothing to record: no entry
        last = store.audit_entries(limit=1)
        assert store.audit_entries(action="verify") == last
        assert store.audit_entries(speaker="carol")[-1] == last[0]
        with pytest.raises(UsageError):
            store.audit_entries(action="launch")
    assert last[0].actor == getpass.getuser() and last[0].score == 0.91
    assert last[0].request_id is None and last[0].seq == 2


def test_a_read_only_store_still_records_its_lookups(db_url):
    rng = np.random.default_rng(2)
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "dave", rng)
    with EnrollmentStore.open(db_url, read_only=True) as reader:
        with acting_as("auditor"):
            reader.record_lookups([PendingEntry("identify", decision="unknown", score=0.2)])
        entries = reader.audit_entries()
    assert [e.action for e in entries] == ["enroll", "identify"]
    assert entries[-1].actor == "auditor"


def test_acting_as_refuses_what_would_corrupt_a_listing():
    with pytest.raises(UsageError), acting_as("two\nlines"):
        pass
    with pytest.raises(UsageError), acting_as("a", "r" * 65):
        pass


def test_concurrent_writers_never_fork_the_chain(db_url):
    rng = np.random.default_rng(3)
    with EnrollmentStore.open(db_url) as store:
        enroll(store, "erin", rng)
    failures: list[BaseException] = []

    def lookups(worker: int) -> None:
        try:
            with EnrollmentStore.open(db_url) as own, acting_as(f"worker-{worker}"):
                for i in range(10):
                    own.record_lookups([PendingEntry("verify", speaker="erin", score=i / 10)])
        except BaseException as exc:  # reported below
            failures.append(exc)

    def enrollments() -> None:
        try:
            with EnrollmentStore.open(db_url) as own:
                local = np.random.default_rng(4)
                for i in range(5):
                    enroll(own, f"new-{i}", local, n=1)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=lookups, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=enrollments))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    with EnrollmentStore.open(db_url) as store:
        check = store.audit_verify()
        entries = store.audit_entries()
    assert check.ok, check.problem
    assert len(entries) == 1 + 3 * 10 + 5 == check.entries


# --- tampering ----------------------------------------------------------------------------------

_ENTRIES = 6


def _filled(url: str) -> None:
    rng = np.random.default_rng(5)
    with EnrollmentStore.open(url) as store:
        enroll(store, "frank", rng)
        for i in range(_ENTRIES - 1):
            store.record_lookups(
                [PendingEntry("verify", speaker="frank", decision="accept", score=0.5 + i / 100)]
            )


def _rewrite(url: str, rows: list[dict]) -> None:
    """Replace the log with ``rows`` renumbered 1..n: the attacker hides any gap."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(AuditEntryRow))
            if rows:
                conn.execute(insert(AuditEntryRow), [r | {"seq": i} for i, r in enumerate(rows, 1)])
    finally:
        engine.dispose()


def _rows(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(select(AuditEntryRow).order_by(AuditEntryRow.seq))
            ]
    finally:
        engine.dispose()


TAMPERING = st.one_of(
    st.tuples(
        st.just("modify"),
        st.integers(0, _ENTRIES - 1),
        st.sampled_from(["actor", "decision", "score", "speaker", "at"]),
    ),
    st.tuples(st.just("delete"), st.integers(0, _ENTRIES - 1), st.just("")),
    st.tuples(st.just("insert"), st.integers(0, _ENTRIES), st.sampled_from(["copy", "forged"])),
    st.tuples(st.just("swap"), st.integers(0, _ENTRIES - 2), st.just("")),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A filled SQLite log, copied for each example."""
    path = tmp_path_factory.mktemp("audit") / "pristine.sqlite"
    _filled(f"sqlite:///{path}")
    return path


def _tamper(rows: list[dict], kind: str, at: int, how: str) -> tuple[list[dict], set[int]]:
    """The tampered rows and the seq numbers an honest report may name as the first bad."""
    rows = [dict(r) for r in rows]
    if kind == "modify":
        row = rows[at]
        if how == "score":
            row["score"] = (row["score"] or 0.0) + 0.125
        elif how == "at":
            import datetime as dt

            row["at"] = row["at"] + dt.timedelta(seconds=1)
        else:
            row[how] = (row[how] or "x") + "!"
        return rows, {at + 1}
    if kind == "delete":
        del rows[at]
        return rows, {at + 1}
    if kind == "insert":
        if how == "copy":
            new = dict(rows[min(at, len(rows) - 1)])
        else:
            # Forged to follow its predecessor exactly: only its successor can tell.
            prev = rows[at - 1]["hash"] if at > 0 else "0" * 64
            new = dict(rows[0]) | {"actor": "mallory", "prev_hash": prev}
            new["hash"] = entry_hash(
                prev,
                at + 1,
                new["at"],
                new["actor"],
                new["action"],
                new["speaker"],
                new["decision"],
                new["score"],
                new["request_id"],
                new["detail"],
            )
        rows.insert(at, new)
        return rows, {at + 1, at + 2}
    rows[at], rows[at + 1] = rows[at + 1], rows[at]
    return rows, {at + 1}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(TAMPERING)
def test_any_single_tampering_is_detected_on_sqlite(pristine, tmp_path, tampering):
    import shutil
    import uuid

    path = tmp_path / f"{uuid.uuid4().hex}.sqlite"
    shutil.copyfile(pristine, path)
    url = f"sqlite:///{path}"
    rows, allowed = _tamper(_rows(url), *tampering)
    _rewrite(url, rows)
    with EnrollmentStore.open(url) as store:
        check = store.audit_verify()
    assert not check.ok
    assert check.bad_seq in allowed, (tampering, check)


@pytest.mark.parametrize(
    "tampering",
    [
        ("modify", 2, "decision"),
        ("delete", 0, ""),
        ("delete", _ENTRIES - 1, ""),
        ("insert", 3, "forged"),
        ("insert", _ENTRIES, "forged"),
        ("swap", 1, ""),
    ],
)
def test_tampering_is_detected_on_both_databases_through_the_cli(db_url, tampering):
    _filled(db_url)
    runner = CliRunner()
    intact = runner.invoke(cli, ["audit", "verify", "--db", db_url])
    assert intact.exit_code == 0, intact.output
    assert f"{_ENTRIES} entries" in intact.output
    rows, allowed = _tamper(_rows(db_url), *tampering)
    _rewrite(db_url, rows)
    broken = runner.invoke(cli, ["audit", "verify", "--db", db_url, "--json"])
    assert broken.exit_code == 1, broken.output
    report = json.loads(broken.output)
    assert report["ok"] is False and report["bad_seq"] in allowed
    text_form = runner.invoke(cli, ["audit", "verify", "--db", db_url])
    assert text_form.exit_code == 1
    assert f"broken at entry {report['bad_seq']}" in text_form.output


def test_a_changed_head_row_is_detected(sqlite_url):
    _filled(sqlite_url)
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": "f" * 64})
    engine.dispose()
    with EnrollmentStore.open(sqlite_url) as store:
        check = store.audit_verify()
    assert not check.ok and check.bad_seq == _ENTRIES


def test_cli_audit_list_filters(db_url):
    _filled(db_url)
    runner = CliRunner()
    listed = runner.invoke(cli, ["audit", "list", "--db", db_url, "--json"])
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.output)
    assert [e["action"] for e in entries] == ["enroll"] + ["verify"] * (_ENTRIES - 1)
    only = runner.invoke(
        cli, ["audit", "list", "--db", db_url, "--action", "enroll", "--speaker", "frank"]
    )
    assert only.exit_code == 0 and only.output.count("\n") == 1 and "\tenroll\t" in only.output
    future = runner.invoke(
        cli, ["audit", "list", "--db", db_url, "--since", "2999-01-01", "--json"]
    )
    assert future.exit_code == 0 and json.loads(future.output) == []
    bad = runner.invoke(cli, ["audit", "list", "--db", db_url, "--since", "yesterday"])
    assert bad.exit_code == 2 and "error: --since" in bad.output


def test_keys_can_be_created_with_the_audit_scope(sqlite_url):
    runner = CliRunner()
    made = runner.invoke(
        cli, ["keys", "create", "auditor", "--scope", "audit", "--db", sqlite_url, "--json"]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["scopes"] == ["audit"]


def test_lookups_through_the_facade_are_recorded_after_the_decision(db_url, model):
    from helpers import by_speaker, require_data
    from speakerdb import SpeakerDB

    require_data()
    voices = by_speaker("vctk")
    p225, p226 = sorted(voices["p225"]), sorted(voices["p226"])
    with SpeakerDB.open(db_url, model=model) as db:
        db.enroll("p225", p225[:3])
        db.enroll("p226", p226[:3])
        # AS-norm needs a cohort of ten: random voiceprints of the model's dimension do.
        rng = np.random.default_rng(7)
        dimension = db.identity.dimension
        for i in range(10):
            utterances = [fake_utterance(rng, dimension)]
            db.store.enroll(EnrollRequest(f"cohort-{i}", utterances), db.identity)
        with acting_as("desk-7", "call-123"):
            verified = db.verify_many("p225", [p225[5], p226[5]])
            found = db.identify(p225[6])
            db.compare(p225[5], p226[5])  # file against file: not a database lookup
            normed = db.compare(p225[5], p225[6], norm="asnorm")  # scored against the db
        entries = db.audit_entries(since=None)
        assert db.audit_verify().ok
    lookups = [e for e in entries if e.action != "enroll"]
    assert [(e.action, e.speaker, e.decision) for e in lookups] == [
        ("verify", "p225", "accept" if verified[0].accepted else "reject"),
        ("verify", "p225", "accept" if verified[1].accepted else "reject"),
        ("identify", found.best, "identified" if found.best else "unknown"),
        ("compare", None, "accept" if normed.same_speaker else "reject"),
    ]
    assert [e.score for e in lookups[:2]] == [v.score for v in verified]
    assert lookups[2].score == found.matches[0].score
    assert {(e.actor, e.request_id) for e in lookups} == {("desk-7", "call-123")}
    assert not any(str(p) in json.dumps([e.to_dict() for e in entries]) for p in p225[:7])
