"""Tenants (domains) on real SQLite files and a real PostgreSQL server: the same name in two
tenants, every verb of the store confined to its tenant (reads, writes, identification
among the shared index, keys, calibration, consent, opt-outs, expiry, the audit log with one
chain per tenant), through Python, the CLI and the HTTP service, and a hostile client that
calls every route of the app with one tenant's key and learns nothing of another's."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from helpers import bulk_enroll, clustered_vectors, fake_model, fake_utterance
from speakerdb.cli import cli
from speakerdb.errors import (
    AlreadyExistsError,
    ConsentRequiredError,
    NotFoundError,
    OptedOutError,
    SpeakerNotFoundError,
    UsageError,
)
from speakerdb.storage._records import CalibrationSetting, EnrollRequest
from speakerdb.storage._schema import Tenant
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


def enroll(store, name, rng, n=2, **kwargs):
    request = EnrollRequest(name, [fake_utterance(rng) for _ in range(n)], **kwargs)
    return store.enroll(request, MODEL)


def tenants_in(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(select(Tenant.name)).scalars())
    finally:
        engine.dispose()


def test_the_same_name_in_two_tenants_is_two_speakers(db_url):
    rng = np.random.default_rng(0)
    with EnrollmentStore.open(db_url) as store:
        acme = store.in_tenant("acme")
        mine = enroll(store, "alice", rng).speaker
        theirs = enroll(acme, "alice", rng, n=3).speaker
        assert mine.id != theirs.id
        assert (store.speaker("alice").utterances, acme.speaker("alice").utterances) == (2, 3)
        enroll(acme, "zed", rng)
        assert [s.name for s in store.speakers()] == ["alice"]
        assert [s.name for s in acme.speakers()] == ["alice", "zed"]
        assert (store.counts(), acme.counts()) == ((1, 2), (2, 5))
        # A name of the other tenant is exactly as unknown as one never enrolled.
        for reader in (store.speaker, store.utterances, store.centroid, store.delete_speaker):
            with pytest.raises(SpeakerNotFoundError) as there:
                reader("zed")
            with pytest.raises(SpeakerNotFoundError) as nowhere:
                reader("nobody")
            assert str(there.value).replace("zed", "X") == str(nowhere.value).replace("nobody", "X")
        assert store.speaker_records(["alice", "zed"]).keys() == {"alice"}
        assert store.existing_hashes(["zed"]) == {"zed": set()}
        # Renaming checks names within the tenant only; deleting touches no other tenant.
        store.rename_speaker("alice", "zed")
        with pytest.raises(AlreadyExistsError):
            acme.rename_speaker("alice", "zed")
        store.delete_speaker("zed")
        assert acme.speaker("zed").utterances == 2 and acme.speaker("alice").utterances == 3
        assert store.speakers() == []


def test_a_tenant_opened_by_url_and_an_unknown_tenant_reads_empty(db_url):
    rng = np.random.default_rng(1)
    with EnrollmentStore.open(db_url, tenant="acme") as store:
        assert store.tenant == "acme"
        enroll(store, "bob", rng)
    with EnrollmentStore.open(db_url, read_only=True, tenant="ghost") as ghost:
        assert ghost.speakers() == [] and ghost.counts() == (0, 0)
        assert ghost.search(fake_utterance(rng).embedding, 5, MODEL) == [[]]
        assert ghost.audit_entries() == [] and ghost.audit_verify().ok
    with EnrollmentStore.open(db_url) as store:
        assert store.speakers() == []
        assert store.in_tenant("acme").speaker("bob").utterances == 2
    # Reading never creates a tenant: which tenants exist is not for a reader to probe.
    assert tenants_in(db_url) == ["acme", "default"]
    with pytest.raises(UsageError):
        EnrollmentStore.open(db_url, tenant="bad\nname")


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_identification_searches_only_the_tenant_and_stays_exact(tmp_path, kind):
    """A small tenant inside a large shared index: its answers are the exact nearest of its
    own speakers (brute force over them), never another tenant's."""
    model = fake_model(dimension=32)
    vectors = clustered_vectors(3000, 32, seed=3)
    with EnrollmentStore.open(tmp_path / "big.sqlite") as store:
        bulk_enroll(store, vectors[:2900], model)
        small = store.in_tenant("small")
        bulk_enroll(small, vectors[2900:], model, start=2900)
        store.rebuild_index(kind)
        assert store.index_status().params.startswith(kind)
        queries = clustered_vectors(40, 32, seed=4)
        for view, own in ((small, vectors[2900:]), (store, vectors[:2900])):
            offset = 2900 if view is small else 0
            found = view.search(queries, 5, model)
            truth = np.argsort(-(queries @ own.T), axis=1, kind="stable")[:, :5]
            for answer, best in zip(found, truth, strict=True):
                assert [c.name for c in answer] == [f"s{offset + i:06d}" for i in best]
        ids, _ = small.index_vectors()
        assert len(ids) == 100


def test_keys_calibration_consent_and_opt_outs_are_per_tenant(db_url):
    rng = np.random.default_rng(2)
    with EnrollmentStore.open(db_url) as store:
        acme = store.in_tenant("acme")
        mine, theirs = store.create_key("desk", ["verify"]), acme.create_key("desk", ["admin"])
        assert store.authenticate(mine.secret).tenant == "default"
        assert acme.authenticate(theirs.secret).tenant == "acme"
        assert [k.name for k in acme.api_keys()] == ["desk"]
        assert acme.api_keys()[0].scopes == ("admin",)
        store.revoke_key("desk")
        assert store.authenticate(theirs.secret) is not None
        with pytest.raises(NotFoundError):
            store.revoke_key("desk")

        acme.set_calibration(CalibrationSetting("none", "threshold", threshold=0.77))
        assert acme.threshold() == (0.77, None) and store.threshold() == (None, None)

        acme.set_require_consent(True)
        assert acme.require_consent() and not store.require_consent()
        enroll(store, "carol", rng)
        with pytest.raises(ConsentRequiredError):
            enroll(acme, "carol", rng)
        enroll(acme, "carol", rng, consent="form 7")

        store.opt_out("carol")
        with pytest.raises(SpeakerNotFoundError):
            store.speaker("carol")
        assert acme.speaker("carol").consent == "form 7"
        assert store.opted_out(["carol"]) == {"carol"} and acme.opted_out(["carol"]) == set()
        with pytest.raises(OptedOutError):
            enroll(store, "carol", rng)
        with pytest.raises(NotFoundError):
            acme.opt_in("carol")
        store.opt_in("carol")


def test_expiry_is_per_tenant_unless_all_tenants(db_url):
    rng = np.random.default_rng(3)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with EnrollmentStore.open(db_url) as store:
        acme, other = store.in_tenant("acme"), store.in_tenant("other")
        for view in (store, acme, other):
            enroll(view, "old", rng, expires_at=past)
        assert acme.expire() == ["old"]
        assert store.speaker("old") and other.speaker("old")
        assert sorted(store.expire(all_tenants=True)) == ["old", "old"]
        assert [e.action for e in other.audit_entries()] == ["enroll", "expire"]
        assert store.audit_verify().ok and other.audit_verify().ok


def test_each_tenant_has_its_own_audit_chain(db_url):
    rng = np.random.default_rng(4)
    with EnrollmentStore.open(db_url) as store:
        acme = store.in_tenant("acme")
        enroll(store, "dan", rng)
        enroll(acme, "erin", rng)
        acme.delete_speaker("erin")
        store.create_key("k", ["audit"])
        mine, theirs = store.audit_entries(), acme.audit_entries()
        assert [(e.seq, e.action, e.speaker) for e in mine] == [
            (1, "enroll", "dan"),
            (2, "key-create", None),
        ]
        assert [(e.seq, e.action, e.speaker) for e in theirs] == [
            (1, "enroll", "erin"),
            (2, "delete", "erin"),
        ]
        assert {e.tenant for e in mine} == {"default"} and {e.tenant for e in theirs} == {"acme"}
        assert all(e.to_dict()["tenant"] == "acme" for e in theirs)
        assert store.audit_verify().ok and acme.audit_verify().entries == 2
        # The tenant is part of an entry's hash: moving one to another chain is detected.
        engine = create_engine(db_url)
        with engine.begin() as conn:
            from sqlalchemy import update

            from speakerdb.storage._schema import AuditEntryRow

            acme_id = conn.execute(select(Tenant.id).where(Tenant.name == "acme")).scalar_one()
            conn.execute(
                update(AuditEntryRow)
                .where(AuditEntryRow.tenant_id == acme_id, AuditEntryRow.seq == 2)
                .values(tenant_id=1, seq=3)
            )
        engine.dispose()
        assert not acme.audit_verify().ok
        check = store.audit_verify()
        assert not check.ok and check.bad_seq == 3


def test_cli_tenant_option(db_url):
    """``--tenant`` on the commands of speakers, lookups, keys, settings and the audit log
    (real speech: two VCTK speakers under one name in two tenants)."""
    from helpers import by_speaker, require_data

    require_data()
    voices = by_speaker("vctk")
    first, second = sorted(voices)[:2]
    a, b = sorted(voices[first]), sorted(voices[second])
    runner = CliRunner()

    def run(*args: str) -> object:
        return runner.invoke(cli, [*args, "--db", db_url], catch_exceptions=False)

    assert run("enroll", "sam", str(a[0]), str(a[1])).exit_code == 0
    assert run("enroll", "sam", str(b[0]), str(b[1]), "--tenant", "acme").exit_code == 0
    # Each tenant's sam is its own voice.
    assert run("verify", "sam", str(a[2])).exit_code == 0
    assert run("verify", "sam", str(a[2]), "--tenant", "acme").exit_code == 1
    assert run("verify", "sam", str(b[2]), "--tenant", "acme").exit_code == 0
    found = run("identify", str(b[2]), "--json", "--tenant", "acme")
    assert json.loads(found.stdout)["best"] == "sam"
    ghost = run("identify", str(b[2]), "--json", "--tenant", "ghost")
    assert json.loads(ghost.stdout)["matches"] == [] and ghost.exit_code == 1
    missing = run("verify", "sam", str(b[2]), "--tenant", "ghost")
    assert missing.exit_code == 2 and "no enrolled speaker named" in missing.output
    listed = run("speakers", "list", "--json", "--tenant", "acme")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["sam"]
    assert run("db", "set", "require-consent", "on", "--tenant", "acme").exit_code == 0
    refused = run("enroll", "tom", str(b[3]), "--tenant", "acme")
    assert refused.exit_code == 2 and "consent" in refused.output
    assert run("enroll", "tom", str(b[3])).exit_code == 0
    made = run("keys", "create", "desk", "--scope", "verify", "--tenant", "acme")
    assert made.exit_code == 0
    keys = json.loads(run("keys", "list", "--json").stdout)
    assert keys == []
    audit = json.loads(run("audit", "list", "--json", "--tenant", "acme").stdout)
    assert {e["tenant"] for e in audit} == {"acme"}
    assert [e["action"] for e in audit][:2] == ["enroll", "verify"]
    assert "tom" not in json.dumps(audit)
    verified = run("audit", "verify", "--tenant", "acme")
    assert verified.exit_code == 0


# --- the HTTP service under a hostile client ----------------------------------------------------

B_NAME = "bsecret-anna"  # enrolled in tenant B
NEVER = "nsecret-anna"  # enrolled nowhere, same length
B_SECRETS = ("bsecret-ben", "bsecret-cleo", "bmeta-xyz", "bkey-secret")
_VOLATILE = {"at", "created_at", "updated_at", "hash", "prev_hash", "request_id", "seq", "key"}
_VOLATILE |= {"prefix", "pid", "consent_at", "expires_at"}


def _normal(value, name):
    """A response body with the name asked about replaced and per-call values dropped."""
    if isinstance(value, dict):
        return {k: _normal(v, name) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_normal(v, name) for v in value]
    if isinstance(value, str):
        return value.replace(name, "<NAME>")
    return value


def _requests(app, name, audio):
    """One request per HTTP route of the app, built from its parameters: every path
    parameter and ``speaker`` query is ``name``; files are ``audio``; JSON bodies get names
    derived from ``name``. A route with a parameter this cannot fill fails the test."""
    from fastapi.routing import APIRoute
    from starlette.routing import WebSocketRoute

    def flattened(routes):
        for route in routes:
            included = getattr(route, "original_router", None)  # app.include_router(...)
            yield from flattened(included.routes) if included is not None else [route]

    out = []
    for route in flattened(app.routes):
        if isinstance(route, WebSocketRoute):
            out.append(("WS", route.path, {"speaker": name}))
            continue
        if not isinstance(route, APIRoute):  # the docs page, openapi.json
            out.extend(("GET", route.path, {}) for m in getattr(route, "methods", ()) or ())
            continue
        dependant = route.dependant
        path = route.path
        for param in dependant.path_params:
            path = path.replace("{" + param.alias + "}", name)
        params = {p.alias: name for p in dependant.query_params if p.alias == "speaker"}
        files, body = [], None
        for param in dependant.body_params:
            annotation = str(param.field_info.annotation)
            if "UploadFile" in annotation:
                files.append((param.alias, (audio.name, audio.read_bytes(), "audio/wav")))
            elif hasattr(param.field_info.annotation, "model_fields"):
                fields = param.field_info.annotation.model_fields
                body = {
                    field: ["verify"] if "list" in str(info.annotation) else f"{name}-x"
                    for field, info in fields.items()
                }
        for method in sorted(route.methods):
            out.append((method, path, {"params": params, "files": files, "json": body}))
    return out


def _call(server, key, method, path, options, timeout=300):
    if method == "WS":
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect as ws_connect

        url = server.url.replace("http://", "ws://") + f"{path}?speaker={options['speaker']}"
        frames = []
        try:
            with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                ws.send(json.dumps({"sample_rate": 16000, "encoding": "pcm_s16le"}))
                ws.send(json.dumps({"type": "end"}))
                try:
                    while True:
                        frames.append(json.loads(ws.recv(timeout=timeout)))
                except ConnectionClosed:
                    pass
                return ws.close_code, frames
        except InvalidStatus as exc:
            return exc.response.status_code, exc.response.body.decode()
    with server.client(key, timeout=timeout) as client:
        files = options.get("files") or None
        response = client.request(
            method, path, params=options.get("params"), files=files, json=options.get("json")
        )
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def test_a_key_of_one_tenant_learns_nothing_of_another(db_url, monkeypatch):
    """Every route of the app (from its route table: a new route is covered as it comes),
    called with an admin key of tenant A about a speaker of tenant B and about a name
    enrolled nowhere, answers the same (404 bodies identical but for the name); no answer
    holds B's names, metadata or key names; and A's listings do not change when B enrolls."""
    from helpers import by_speaker, require_data
    from service_helpers import Server, upload
    from speakerdb import SpeakerDB
    from speakerdb.service import ServiceSettings, create_app

    require_data()
    voices = {k: sorted(v) for k, v in by_speaker("vctk").items()}
    anna, ben, alpha = (voices[k] for k in sorted(voices)[:3])
    with SpeakerDB.open(db_url) as db:
        b = db.in_tenant("tenant-b")
        b.enroll(B_NAME, anna[:2], metadata={"note": "bmeta-xyz"})
        b.enroll("bsecret-ben", ben[:2])
        b_key = b.create_key("bkey-secret", ["admin"]).secret
        a = db.in_tenant("tenant-a")
        a.enroll("alpha", alpha[:2])
        a_key = a.create_key("a-admin", ["admin"]).secret

    app = create_app(ServiceSettings())
    probe = anna[3]  # B's voice, never enrolled: identify must not find B's speaker
    with Server(db_url) as server:

        def listings():
            return [
                _normal(_call(server, a_key, "GET", path, {})[1], NEVER)
                for path in ("/v1/speakers", "/v1/audit", "/v1/keys")
            ]

        found = _call(server, a_key, "POST", "/v1/identify", {"files": upload([probe])})
        assert found[0] == 200 and found[1]["matches"][0]["name"] == "alpha"
        for answer in (*listings(), found[1]):
            assert "bsecret" not in json.dumps(answer) and "bmeta" not in json.dumps(answer)
        seen = 0
        for (method, path, mine), (_, their_path, theirs) in zip(
            _requests(app, NEVER, probe), _requests(app, B_NAME, probe), strict=True
        ):
            never = _call(server, a_key, method, path, mine)
            about_b = _call(server, a_key, method, their_path, theirs)
            where = f"{method} {path}"
            if path in ("/healthz", "/metrics"):  # the process's own counters and pid
                about_b = never
            assert about_b[0] == never[0], where
            both = (_normal(_normal(r[1], B_NAME), NEVER) for r in (about_b, never))
            assert next(both) == next(both), where
            # (A enrolls B_NAME itself on the way: the name alone is no longer B's.)
            for text in (json.dumps(never[1]), json.dumps(about_b[1])):
                assert not any(secret in text for secret in B_SECRETS), (where, text[:300])
            seen += 1
        assert seen >= 15
        # B's speakers are untouched by all of it, and B's changes do not show to A.
        before = listings()
        with server.client(b_key) as client:
            names = [s["name"] for s in client.get("/v1/speakers").json()]
            assert names == [B_NAME, "bsecret-ben"]
            made = client.post("/v1/speakers/bsecret-cleo/enroll", files=upload(ben[2:4]))
            assert made.status_code == 201, made.text
        assert listings() == before
