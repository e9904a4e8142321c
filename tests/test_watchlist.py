"""Watchlists of known fraudsters on real SQLite files and a real PostgreSQL server, with
real speech (VCTK): every verify and identify of the tenant is also scored against its
watchlist, a match is decision KNOWN_FRAUDSTER (not accepted, nobody identified), the
watchlisted voices are never speakers, other tenants are untouched; Python, CLI and HTTP."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import by_speaker, require_data
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.errors import NotFoundError


@pytest.fixture(scope="module")
def voices():
    require_data()
    groups = by_speaker("vctk")
    names = sorted(groups)[:3]
    return {
        label: sorted(groups[n]) for label, n in zip(("alice", "bob", "fraud"), names, strict=True)
    }


def test_a_watchlisted_voice_is_caught_in_verify_and_identify(db_url, voices):
    alice, bob, fraud = voices["alice"], voices["bob"], voices["fraud"]
    with SpeakerDB.open(db_url) as db:
        db.enroll("alice", alice[:2])
        db.enroll("bob", bob[:2])
        other = db.in_tenant("acme")
        other.enroll("alice", alice[:2])
        # Without a watchlist nothing changes in the answers.
        plain = db.verify("alice", alice[2])
        assert plain.watchlist is None and "watchlist" not in plain.to_dict()

        record = db.watchlist_add("fraud", fraud[:2])
        assert (record.name, record.utterances) == ("fraud", 2)
        assert [r.name for r in db.watchlist()] == ["fraud"]
        assert other.watchlist() == []
        assert [s.name for s in db.speakers()] == ["alice", "bob"]

        genuine = db.verify("alice", alice[2])
        assert genuine.accepted and genuine.watchlist == [] and genuine.decision is None
        caught = db.verify("alice", fraud[2])
        assert not caught.accepted and caught.decision == "KNOWN_FRAUDSTER"
        assert [h["name"] for h in caught.watchlist] == ["fraud"]
        assert caught.watchlist[0]["llr"] >= caught.threshold
        assert caught.to_dict()["watchlist"][0]["name"] == "fraud"

        who = db.identify(fraud[3])
        assert who.best is None and who.decision == "KNOWN_FRAUDSTER"
        assert "fraud" not in [m.name for m in who.matches]
        known = db.identify(bob[2])
        assert known.best == "bob" and known.watchlist == []

        # Another tenant's lookups know nothing of this watchlist.
        elsewhere = other.verify("alice", fraud[2])
        assert elsewhere.watchlist is None and elsewhere.decision is None

        entries = db.audit_entries()
        assert [e.decision for e in entries if e.action == "verify"][-1] == "known_fraudster"
        assert [e.decision for e in entries if e.action == "identify"] == [
            "known_fraudster",
            "identified",
        ]
        assert [e.action for e in entries if e.action.startswith("watchlist")] == ["watchlist-add"]
        db.watchlist_remove("fraud")
        with pytest.raises(NotFoundError):
            db.watchlist_remove("fraud")
        with pytest.raises(NotFoundError):
            other.watchlist_remove("fraud")
        assert db.verify("alice", fraud[2]).watchlist is None
        assert db.audit_verify().ok


def test_watchlist_commands(sqlite_url, voices):
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, [*args, "--db", sqlite_url], catch_exceptions=False)

    alice, fraud = voices["alice"], voices["fraud"]
    assert run("enroll", "alice", str(alice[0]), str(alice[1])).exit_code == 0
    added = run("watchlist", "add", "mallory", str(fraud[0]), str(fraud[1]), "--json")
    assert added.exit_code == 0 and json.loads(added.stdout)["name"] == "mallory"
    listed = run("watchlist", "list", "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == ["mallory"]
    assert json.loads(run("watchlist", "list", "--json", "--tenant", "acme").stdout) == []
    caught = run("verify", "alice", str(fraud[2]))
    assert caught.exit_code == 1 and caught.stdout.startswith("KNOWN_FRAUDSTER")
    answer = json.loads(run("identify", str(fraud[2]), "--json").stdout)
    assert answer["best"] is None and answer["watchlist"][0]["name"] == "mallory"
    assert run("verify", "alice", str(alice[2])).exit_code == 0
    assert run("watchlist", "remove", "mallory").exit_code == 0
    gone = run("watchlist", "remove", "mallory")
    assert gone.exit_code == 2 and "not on the watchlist" in gone.output


def test_watchlist_through_the_api(db_url, voices):
    from service_helpers import Server, upload

    alice, fraud = voices["alice"], voices["fraud"]
    with SpeakerDB.open(db_url) as db:
        db.enroll("alice", alice[:2])
        admin = db.create_key("admin", ["admin"]).secret
        verifier = db.create_key("desk", ["verify"]).secret
        outsider = db.in_tenant("acme").create_key("admin", ["admin"]).secret
    with Server(db_url) as server:
        with server.client(admin) as client:
            made = client.post("/v1/watchlist/mallory", files=upload(fraud[:2]))
            assert made.status_code == 201, made.text
            assert made.json()["name"] == "mallory"
            assert [r["name"] for r in client.get("/v1/watchlist").json()] == ["mallory"]
        with server.client(verifier) as client:
            assert client.get("/v1/watchlist").status_code == 403
            answer = client.post("/v1/speakers/alice/verify", files=upload([fraud[2]]))
            assert answer.status_code == 200
            assert answer.json()["decision"] == "KNOWN_FRAUDSTER"
            assert answer.json()["watchlist"][0]["name"] == "mallory"
            genuine = client.post("/v1/speakers/alice/verify", files=upload([alice[2]]))
            assert genuine.json()["decision"] == "ACCEPT" and genuine.json()["watchlist"] == []
        with server.client(outsider) as client:
            assert client.get("/v1/watchlist").json() == []
            assert client.delete("/v1/watchlist/mallory").status_code == 404
        with server.client(admin) as client:
            assert client.delete("/v1/watchlist/mallory").status_code == 200
            assert client.get("/v1/watchlist").json() == []
