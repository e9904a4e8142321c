"""``speakerdb serve`` tested as a client sees it: real uvicorn servers on 127.0.0.1 in child
processes, httpx as the client, SQLite and PostgreSQL, real speech.

Every route; authentication and scopes; limits (size, duration, count, time); the broken
recordings of the CLI's tests (nothing stored); two servers on one PostgreSQL database
seeing each other's changes at once; servers SIGKILLed during an enrollment upload leaving
the database consistent; and generated requests from the OpenAPI document (no 5xx).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import broken_inputs, by_speaker, require_data
from service_helpers import (
    Server,
    multipart,
    raw_request,
    read_response,
    upload,
)
from speakerdb import SpeakerDB

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")

SCOPED = ("admin", "verify", "identify", "enroll")


@dataclass
class Served:
    server: Server
    url: str
    keys: dict[str, str]
    env: dict[str, str]

    def client(self, scope: str | None = "admin") -> httpx.Client:
        return self.server.client(self.keys[scope] if scope else None)


def make_keys(url: str) -> dict[str, str]:
    """One key per scope, named after it, created through the library."""
    with SpeakerDB.open(url) as db:
        return {scope: db.create_key(scope, [scope]).secret for scope in SCOPED}


@pytest.fixture(scope="module")
def voices():
    require_data()
    groups = by_speaker("vctk")
    return {name: sorted(files) for name, files in groups.items()}


def _database(request, folder: Path) -> tuple[str, dict[str, str], object]:
    """(url, environment for servers, cleanup) of a fresh database of the requested kind."""
    env = os.environ.copy()
    if request.param == "sqlite":
        return f"sqlite:///{folder / 'service.sqlite'}", env, lambda: None
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from conftest import PG_URL

    admin = request.getfixturevalue("pg_admin")
    name = f"speakerdb_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    env["SPEAKERDB_INDEX_DIR"] = str(folder / "index-cache")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    return url, env, drop


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory, voices):
    folder = tmp_path_factory.mktemp(f"served-{request.param}")
    url, env, drop = _database(request, folder)
    try:
        keys = make_keys(url)
        server = Server(url, env=env)
    except BaseException:
        drop()
        raise
    yield Served(server, url, keys, env)
    server.stop()
    drop()


def _speakers(client: httpx.Client) -> list[str]:
    response = client.get("/v1/speakers")
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()]


# --- every route --------------------------------------------------------------------------------


def test_every_route(served, voices):
    p225, p226, p228 = voices["p225"], voices["p226"], voices["p228"]
    name = f"alice-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin, served.client(None) as anonymous:
        assert anonymous.get("/healthz").json()["status"] == "ok"
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert {"/v1/speakers/{name}/verify", "/v1/identify", "/v1/compare"} <= set(paths)
        docs = anonymous.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        # Offline servers: the page's script and style come from this server, no CDN.
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text)
        assert len(assets) == 2 and all(a.startswith("/docs-assets/") for a in assets)
        for asset in assets:
            got = anonymous.get(asset)
            assert got.status_code == 200 and len(got.content) > 10_000, asset

        created = admin.post(f"/v1/speakers/{name}/enroll", files=upload(p225[:3]))
        assert created.status_code == 201, created.text
        report = created.json()
        assert report["created"] and report["accepted"] == 3 and report["utterances"] == 3
        assert [i["source"] for i in report["inputs"]] == [f"upload:{p.name}" for p in p225[:3]]

        again = admin.post(
            f"/v1/speakers/{name}/enroll",
            files=upload(p225[2:4]),
            data={"mode": "append", "metadata": json.dumps({"team": "support"})},
        )
        assert again.status_code == 200, again.text
        assert [i["status"] for i in again.json()["inputs"]] == ["duplicate", "accepted"]

        genuine = admin.post(f"/v1/speakers/{name}/verify", files=upload(p225[5:6])).json()
        assert genuine["decision"] == "ACCEPT" and genuine["accepted"] is True
        assert genuine["score"] >= genuine["threshold"] and genuine["model"].startswith("ge2e")
        assert genuine["speaker"] == name and genuine["source"] == f"upload:{p225[5].name}"
        impostor = admin.post(f"/v1/speakers/{name}/verify", files=upload(p226[:1])).json()
        assert impostor["decision"] == "REJECT" and impostor["score"] < impostor["threshold"]
        both = admin.post(f"/v1/speakers/{name}/verify", files=upload([p225[6], p226[1]]))
        assert [r["decision"] for r in both.json()] == ["ACCEPT", "REJECT"]
        # A threshold is on the scale of the rule in use (an LLR when calibrated): one above
        # the genuine probe's own score must turn it away.
        above = round(genuine["score"] + 0.5, 3)
        strict = admin.post(
            f"/v1/speakers/{name}/verify", files=upload(p225[5:6]), data={"threshold": str(above)}
        ).json()
        assert strict["threshold"] == above and strict["decision"] == "REJECT"
        assert strict["score"] == pytest.approx(genuine["score"])

        nobody = admin.post("/v1/speakers/nobody-at-all/verify", files=upload(p225[5:6]))
        assert nobody.status_code == 404
        assert nobody.json()["decision"] == "SPEAKER_NOT_ENROLLED"
        assert nobody.json()["error"]["code"] == "speaker_not_found"

        found = admin.post("/v1/identify", files=upload(p225[7:8]), data={"top_k": "3"}).json()
        assert found["decision"] == "IDENTIFIED" and found["best"] == name
        assert 1 <= len(found["matches"]) <= 3
        unknown = admin.post("/v1/identify", files=upload(p228[:1])).json()
        assert unknown["decision"] == "UNKNOWN_SPEAKER" and unknown["best"] is None

        same = admin.post(
            "/v1/compare", files=upload(p225[:1], "a") + upload(p225[1:2], "b")
        ).json()
        assert same["decision"] == "ACCEPT" and same["same_speaker"] is True
        assert same["a"] == f"upload:{p225[0].name}" and same["b"] == f"upload:{p225[1].name}"
        different = admin.post(
            "/v1/compare", files=upload(p225[:1], "a") + upload(p226[:1], "b")
        ).json()
        assert different["decision"] == "REJECT"

        assert name in _speakers(admin)
        shown = admin.get(f"/v1/speakers/{name}").json()
        assert shown["utterances"] == 4 and shown["metadata"] == {"team": "support"}
        assert {r["source"] for r in shown["recordings"]} == {f"upload:{p.name}" for p in p225[:4]}

        renamed = admin.post(f"/v1/speakers/{name}/rename", json={"new_name": name + "-2"})
        assert renamed.status_code == 200 and renamed.json()["name"] == name + "-2"
        assert admin.get(f"/v1/speakers/{name}").status_code == 404
        admin.post(f"/v1/speakers/{name}/enroll", files=upload(p226[:2]))
        taken = admin.post(f"/v1/speakers/{name}/rename", json={"new_name": name + "-2"})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "already_exists"

        deleted = admin.delete(f"/v1/speakers/{name}-2")
        assert deleted.status_code == 200 and deleted.json()["deleted"]["name"] == name + "-2"
        assert admin.delete(f"/v1/speakers/{name}-2").status_code == 404
        gone = admin.post(f"/v1/speakers/{name}-2/verify", files=upload(p225[5:6]))
        assert gone.json()["decision"] == "SPEAKER_NOT_ENROLLED"
        after = admin.post("/v1/identify", files=upload(p225[7:8])).json()
        assert after["best"] != name + "-2"
        admin.delete(f"/v1/speakers/{name}")

        metrics = anonymous.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert "speakerdb_embed_batch_files_count" in text
        assert 'speakerdb_errors_total{code="speaker_not_found"}' in text
        assert 'route="/v1/speakers/{name}/verify",status="200"' in text
        assert "speakerdb_http_request_duration_seconds_bucket" in text


def test_keys_through_the_api(served, voices):
    with served.client("admin") as admin:
        made = admin.post("/v1/keys", json={"name": "robot", "scopes": ["read"]})
        assert made.status_code == 201, made.text
        secret = made.json()["key"]
        assert made.json()["scopes"] == ["verify", "identify"]
        listed = admin.get("/v1/keys").json()
        assert {k["name"] for k in listed} >= {"robot", *SCOPED}
        assert secret not in json.dumps(listed)
        assert (
            admin.post("/v1/keys", json={"name": "robot", "scopes": ["verify"]}).status_code == 409
        )
        bad = admin.post("/v1/keys", json={"name": "x", "scopes": ["everything"]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "usage"
        with served.server.client(secret) as robot:
            assert robot.get("/v1/speakers").status_code == 200
            assert robot.get("/v1/keys").status_code == 403
            assert admin.delete("/v1/keys/robot").status_code == 200
            assert robot.get("/v1/speakers").status_code == 401
        assert admin.delete("/v1/keys/robot").status_code == 404


def test_audit_log_through_the_api(served, voices):
    p225 = voices["p225"]
    name = f"audited-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin:
        assert admin.post(f"/v1/speakers/{name}/enroll", files=upload(p225[:2])).status_code == 201
    with served.client("verify") as verifier:
        answered = verifier.post(
            f"/v1/speakers/{name}/verify",
            files=upload(p225[4:5]),
            headers={"X-Request-ID": f"req-{name}"},
        )
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-request-id"] == f"req-{name}"
        assert verifier.get("/v1/audit").status_code == 403  # the audit scope is needed
    with SpeakerDB.open(served.url) as db:
        made = db.create_key(f"auditor-{name}", ["audit"])
    with served.server.client(made.secret) as auditor:
        got = auditor.get("/v1/audit", params={"speaker": name, "verify": "true"})
        assert got.status_code == 200, got.text
        entries = got.json()["entries"]
        assert [(e["action"], e["actor"], e["decision"]) for e in entries] == [
            ("enroll", "admin", "created"),
            ("verify", "verify", answered.json()["decision"].lower()),
        ]
        assert entries[1]["request_id"] == f"req-{name}"
        assert entries[1]["score"] == pytest.approx(answered.json()["score"])
        assert got.json()["check"]["ok"] is True
        assert not any(p.name in got.text for p in p225[:5])  # no upload names or paths
        assert auditor.get("/v1/speakers").status_code == 403  # audit reads only the log
        bad = auditor.get("/v1/audit", params={"since": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "usage"
    with served.client("admin") as admin:
        assert admin.get("/v1/audit", params={"limit": "1"}).status_code == 200
        assert admin.delete(f"/v1/speakers/{name}").status_code == 200


def test_consent_expiry_and_opt_out_through_the_api(served, voices):
    p225 = voices["p225"]
    name = f"Governed-{uuid.uuid4().hex[:6]}"
    with served.client("enroll") as enroller, served.client("admin") as admin:
        made = enroller.post(
            f"/v1/speakers/{name}/enroll",
            files=upload(p225[:2]),
            data={"consent": "recorded on call 9", "expires_after": "90d"},
        )
        assert made.status_code == 201, made.text
        shown = admin.get(f"/v1/speakers/{name}").json()
        assert shown["consent"] == "recorded on call 9" and shown["consent_by"] == "enroll"
        assert shown["expires_at"] is not None
        bad = enroller.post(
            f"/v1/speakers/{name}/enroll", files=upload(p225[2:3]), data={"expires_after": "1x"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "usage"
        assert enroller.post(f"/v1/speakers/{name}/opt-out").status_code == 403
        out = admin.post(f"/v1/speakers/{name}/opt-out")
        assert out.status_code == 200 and out.json() == {"opted_out": name, "erased": True}
        assert admin.get(f"/v1/speakers/{name}").status_code == 404
        again = enroller.post(f"/v1/speakers/{name.lower()}/enroll", files=upload(p225[:2]))
        assert again.status_code == 409 and again.json()["error"]["code"] == "opted_out"
        assert admin.delete(f"/v1/opt-outs/{name}").status_code == 200
        assert admin.delete(f"/v1/opt-outs/{name}").status_code == 404
        expired = admin.post("/v1/expire")
        assert expired.status_code == 200 and name not in expired.json()["expired"]


# --- authentication -----------------------------------------------------------------------------


def test_keys_and_scopes(served, voices):
    p225 = voices["p225"]
    name = f"bob-{uuid.uuid4().hex[:6]}"
    with served.client("enroll") as enroller:
        assert (
            enroller.post(f"/v1/speakers/{name}/enroll", files=upload(p225[:2])).status_code == 201
        )
        assert (
            enroller.post(f"/v1/speakers/{name}/verify", files=upload(p225[3:4])).status_code == 403
        )
    with served.client(None) as anonymous:
        refused = anonymous.post(f"/v1/speakers/{name}/verify", files=upload(p225[3:4]))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/v1/speakers").status_code == 401
        wrong = anonymous.get("/v1/speakers", headers={"Authorization": "Bearer sdb_not-a-key"})
        assert wrong.status_code == 401
        basic = anonymous.get("/v1/speakers", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401
        assert anonymous.get("/healthz").status_code == 200
    with served.client("verify") as verifier:
        assert (
            verifier.post(f"/v1/speakers/{name}/verify", files=upload(p225[3:4])).status_code == 200
        )
        assert (
            verifier.post(
                "/v1/compare", files=upload(p225[:1], "a") + upload(p225[1:2], "b")
            ).status_code
            == 200
        )
        forbidden = verifier.post("/v1/identify", files=upload(p225[3:4]))
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        assert (
            verifier.post(f"/v1/speakers/{name}/enroll", files=upload(p225[3:4])).status_code == 403
        )
        assert verifier.delete(f"/v1/speakers/{name}").status_code == 403
        assert verifier.get("/v1/keys").status_code == 403
        assert verifier.get(f"/v1/speakers/{name}").status_code == 200
    with served.client("identify") as identifier:
        assert identifier.post("/v1/identify", files=upload(p225[3:4])).status_code == 200
        assert (
            identifier.post(f"/v1/speakers/{name}/verify", files=upload(p225[3:4])).status_code
            == 403
        )
        assert (
            identifier.post(f"/v1/speakers/{name}/rename", json={"new_name": "x"}).status_code
            == 403
        )
    # A key revoked by the CLI stops working at once.
    with SpeakerDB.open(served.url) as db:
        made = db.create_key(f"temp-{name}", ["verify"])
    with served.server.client(made.secret) as temporary:
        assert temporary.get("/v1/speakers").status_code == 200
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "speakerdb",
                "keys",
                "revoke",
                f"temp-{name}",
                "--db",
                served.url,
            ],
            capture_output=True,
            text=True,
            env=served.env,
        )
        assert cli.returncode == 0, cli.stderr
        assert temporary.get("/v1/speakers").status_code == 401
    with served.client("admin") as admin:
        assert admin.delete(f"/v1/speakers/{name}").status_code == 200


# --- bad audio ------------------------------------------------------------------------------------


def test_broken_recordings_are_refused_and_nothing_is_stored(served, voices, tmp_path):
    expected_status = {"unreadable": 415, "invalid": 422}
    broken = {
        what: (path, code)
        for what, (path, code) in broken_inputs(tmp_path).items()
        if path.is_file()  # a missing file or a directory cannot be uploaded
    }
    name = f"broken-{uuid.uuid4().hex[:6]}"
    reference = f"ref-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin:
        assert (
            admin.post(
                f"/v1/speakers/{reference}/enroll", files=upload(voices["p227"][:2])
            ).status_code
            == 201
        )
        before = _speakers(admin)
        for what, (path, code) in broken.items():
            enrolled = admin.post(f"/v1/speakers/{name}/enroll", files=upload([path]))
            body = enrolled.json()
            assert enrolled.status_code == expected_status.get(code, 422), (what, body)
            assert body["error"]["code"] == code, what
            assert body["inputs"][0]["status"] == "rejected" and body["changed"] is False, what
            verified = admin.post(f"/v1/speakers/{reference}/verify", files=upload([path]))
            if code in ("no_speech", "too_short"):
                assert verified.status_code == 200, what
                assert verified.json()["decision"] == "NOT_ENOUGH_SPEECH", what
                assert verified.json()["error"]["code"] == code, what
            else:
                assert verified.status_code == expected_status.get(code, 422), what
                assert verified.json()["error"]["code"] == code, what
            assert str(tmp_path) not in verified.text and "/tmp" not in verified.text, what
        assert _speakers(admin) == before
        mixed = admin.post(
            f"/v1/speakers/{name}/enroll",
            files=upload([broken["random bytes"][0], voices["p227"][3]]),
        )
        assert mixed.status_code == 201
        assert [i["status"] for i in mixed.json()["inputs"]] == ["rejected", "accepted"]
        admin.delete(f"/v1/speakers/{name}")
        admin.delete(f"/v1/speakers/{reference}")


# --- limits ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory, voices):
    folder = tmp_path_factory.mktemp("limited")
    url = f"sqlite:///{folder / 'limited.sqlite'}"
    keys = make_keys(url)
    server = Server(
        url, "--max-request-mb", "1", "--max-seconds", "8", "--max-files", "2", "--timeout", "3"
    )
    yield Served(server, url, keys, os.environ.copy())
    server.stop()


def test_limits(limited, voices, tmp_path):
    p225 = voices["p225"]
    speech, rate = sf.read(p225[0], dtype="float32")
    long_wav = tmp_path / "long.wav"  # about 12 s: over the 8 s limit, under 1 MB
    sf.write(long_wav, np.concatenate([speech, speech]), rate, subtype="PCM_16")
    long_ogg = tmp_path / "long.ogg"  # about 60 s, compressed to a few hundred kB
    sf.write(long_ogg, np.tile(speech, 10), rate, format="OGG", subtype="VORBIS")
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(1_200_000))
    with limited.client("admin") as admin:
        for path in (long_wav, long_ogg):
            refused = admin.post("/v1/identify", files=upload([path]))
            assert refused.status_code == 413, refused.text
            assert refused.json()["error"]["code"] == "too_long"
            enrolled = admin.post("/v1/speakers/long/enroll", files=upload([path]))
            assert enrolled.status_code == 413 and enrolled.json()["error"]["code"] == "too_long"
        too_big = admin.post("/v1/speakers/big/enroll", files=upload([big]))
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
        many = admin.post("/v1/identify", files=upload(p225[:3]))
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_files"
        assert _speakers(admin) == []
        # A body announced in full but sent by halves is cut off after the time limit.
        body, content_type = multipart(upload(p225[:1]))
        connection = raw_request(
            limited.server.address, "/v1/identify", body, content_type, limited.keys["admin"], 100
        )
        with connection:
            status, answer = read_response(connection)
        assert status == 408 and json.loads(answer)["error"]["code"] == "timeout"
        assert admin.get("/healthz").status_code == 200
        ok = admin.post("/v1/speakers/fine/enroll", files=upload(p225[:1]))
        assert ok.status_code == 201


def test_serve_refuses_a_public_address_without_a_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'open.sqlite'}"
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "speakerdb",
            "serve",
            "--db",
            url,
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "keys create" in refused.stderr
    assert refused.stderr.count("\n") == 1  # one line, no traceback


def test_without_keys_a_loopback_server_is_open_until_a_key_exists(tmp_path, voices):
    url = f"sqlite:///{tmp_path / 'open.sqlite'}"
    with Server(url) as server, server.client() as client:
        assert client.get("/v1/speakers").json() == []
        assert any("no API key exists" in line for line in server.stderr)
        with SpeakerDB.open(url) as db:
            secret = db.create_key("first", ["admin"]).secret
        assert client.get("/v1/speakers").status_code == 401
        with server.client(secret) as keyed:
            assert keyed.get("/v1/speakers").status_code == 200
        with SpeakerDB.open(url) as db:
            db.revoke_key("first")
        assert client.get("/v1/speakers").status_code == 401  # never open again


# --- several servers, crashes ---------------------------------------------------------------------


def test_several_workers_share_one_database(tmp_path, voices):
    url = f"sqlite:///{tmp_path / 'workers.sqlite'}"
    keys = make_keys(url)
    with Server(url, "--workers", "2") as server, server.client(keys["admin"]) as client:
        assert (
            client.post("/v1/speakers/fay/enroll", files=upload(voices["p225"][:3])).status_code
            == 201
        )
        # Whichever worker answers, it sees her at once (each catches up from the log).
        workers: set[int] = set()
        for _ in range(500):  # new connections until both workers have answered
            with server.client(keys["admin"]) as fresh:  # one connection: one worker
                pid = fresh.get("/healthz").json()["pid"]
                if pid not in workers:
                    probe = voices["p225"][4 + len(workers)]
                    assert fresh.post("/v1/identify", files=upload([probe])).json()["best"] == "fay"
                    workers.add(pid)
            if len(workers) == 2:
                break
        assert len(workers) == 2
        # Whichever worker a scrape reaches, /metrics counts the whole server: each worker
        # answered one identification, and every worker's scrape says 2.
        scraped: dict[int, float] = {}
        for _ in range(500):
            with server.client(keys["admin"]) as fresh:
                pid = fresh.get("/healthz").json()["pid"]
                if pid not in scraped:
                    scraped[pid] = identifications(fresh.get("/metrics").text)
            if len(scraped) == 2:
                break
        assert scraped == {pid: 2.0 for pid in workers}


def identifications(metrics: str) -> float:
    """The count of successful POST /v1/identify in a Prometheus text exposition."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("speakerdb_http_requests_total{") and (
            'route="/v1/identify"' in line and 'status="200"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_servers_on_one_postgresql_see_each_other(pg_url, voices):
    p225 = voices["p225"]
    keys = make_keys(pg_url)
    with (
        Server(pg_url) as first,
        Server(pg_url) as second,
        first.client(keys["admin"]) as a,
        second.client(keys["admin"]) as b,
    ):
        assert b.post("/v1/identify", files=upload(p225[5:6])).json()["best"] is None
        assert a.post("/v1/speakers/carol/enroll", files=upload(p225[:3])).status_code == 201
        # The very next request to the other server sees her.
        assert b.post("/v1/identify", files=upload(p225[5:6])).json()["best"] == "carol"
        assert (
            b.post("/v1/speakers/carol/verify", files=upload(p225[5:6])).json()["decision"]
            == "ACCEPT"
        )
        assert "carol" in _speakers(b)
        assert b.delete("/v1/speakers/carol").status_code == 200
        assert a.post("/v1/identify", files=upload(p225[5:6])).json()["best"] is None
        assert a.post("/v1/speakers/carol/verify", files=upload(p225[5:6])).status_code == 404


def _db_check(url: str, env: dict[str, str]) -> dict:
    checked = subprocess.run(
        [sys.executable, "-m", "speakerdb", "db", "check", "--db", url, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return json.loads(checked.stdout)


def _in_flight(server: Server) -> float:
    with server.client() as client:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("speakerdb_http_requests_in_flight "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("moment", ["mid-upload", "upload-complete"])
def test_server_killed_during_an_enrollment_upload(db_url, voices, moment, tmp_path):
    p225 = voices["p225"]
    env = os.environ.copy()
    keys = make_keys(db_url)
    body, content_type = multipart(upload(p225[:3]))
    with Server(db_url, env=env) as server:
        sent = len(body) // 2 if moment == "mid-upload" else len(body)
        connection = raw_request(
            server.address, "/v1/speakers/dave/enroll", body, content_type, keys["admin"], sent
        )
        with connection:
            if moment == "mid-upload":
                # The server is inside the request (its own count says so: this one and
                # the metrics request), not still accepting the connection.
                polls = 10_000
                while _in_flight(server) < 2 and polls:
                    polls -= 1
                assert polls, "the server never started on the upload"
            server.kill()
    report = _db_check(db_url, env)
    assert report["consistent"] is True
    with SpeakerDB.open(db_url) as db:
        names = [s.name for s in db.speakers()]
        if moment == "mid-upload":
            assert "dave" not in names
        elif "dave" in names:
            assert db.speaker("dave").utterances == 3  # all of it or nothing
    with Server(db_url, env=env) as again, again.client(keys["admin"]) as client:
        enrolled = client.post("/v1/speakers/dave/enroll", files=upload(p225[:3]))
        assert enrolled.status_code in (200, 201) and enrolled.json()["utterances"] == 3
    assert _db_check(db_url, env)["consistent"] is True


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_requests_share_embedding_batches(served, voices):
    """16 clients at once: every answer is right and the batcher embedded several
    requests' recordings together."""
    p225 = voices["p225"]
    name = f"erin-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin:
        admin.post(f"/v1/speakers/{name}/enroll", files=upload(p225[:3]))
        with served.client(None) as anonymous:
            before = _batch_counts(anonymous.get("/metrics").text)
    probes = [
        voices["p225"][4 + i % 6] if i % 2 == 0 else voices["p226"][i % 10] for i in range(32)
    ]
    answers: list[dict] = [{} for _ in probes]
    barrier = threading.Barrier(16)

    def client(worker: int) -> None:
        with served.client("verify") as c:
            barrier.wait()
            for i in range(worker, len(probes), 16):
                response = c.post(f"/v1/speakers/{name}/verify", files=upload([probes[i]]))
                answers[i] = response.json()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for probe, answer in zip(probes, answers, strict=True):
        assert answer["decision"] == ("ACCEPT" if probe.parent.name == "p225" else "REJECT"), answer
    with served.client(None) as anonymous:
        after = _batch_counts(anonymous.get("/metrics").text)
    batches = after[0] - before[0]
    requests_batched = after[1] - before[1]
    assert requests_batched >= 32 and batches < requests_batched, (batches, requests_batched)
    with served.client("admin") as admin:
        admin.delete(f"/v1/speakers/{name}")


def _batch_counts(text: str) -> tuple[float, float]:
    """(batches, requests served by batches) from the metrics text."""
    values = {}
    for line in text.splitlines():
        if line.startswith(
            ("speakerdb_embed_batch_requests_count", "speakerdb_embed_batch_requests_sum")
        ):
            key, value = line.split()
            values[key] = float(value)
    return values.get("speakerdb_embed_batch_requests_count", 0.0), values.get(
        "speakerdb_embed_batch_requests_sum", 0.0
    )


# --- generated requests -------------------------------------------------------------------------


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # the HTTP layer is the same
def test_generated_requests_never_get_a_server_error(served):
    """Schemathesis generates requests for every operation of /openapi.json (valid and
    invalid ones, a bounded number each): none may be answered with a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(served.server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {served.keys['admin']}"}
    failures: list[str] = []
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    operations = 0

    def checker(operation):
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy())
        def exercise(case) -> None:
            response = case.call(base_url=served.server.url, headers=headers, timeout=120)
            where = f"{operation.method.upper()} {operation.path}"
            statuses[(where, response.status_code)] += 1
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400 and operation.path != "/metrics":
                error = response.json().get("error", {})
                if set(error) - {"source"} != {"code", "message"}:
                    failures.append(f"{where}: {response.status_code} {response.text[:200]}")

        return exercise

    for result in schema.get_all_operations():
        checker(result.ok())()
        operations += 1
    assert operations >= 10
    print("\n" + "\n".join(f"{n:4d} {w} -> {c}" for (w, c), n in sorted(statuses.items())))
    assert {c // 100 for _, c in statuses} >= {2, 4}  # it did reach the routes' work
    assert not failures, "\n".join(failures[:10]) + "\n" + "".join(served.server.stderr)[-3000:]
    assert served.server.process.poll() is None  # still up
    assert "Traceback" not in "".join(served.server.stderr)


# --- the keys command -----------------------------------------------------------------------------


def test_keys_command_shows_a_key_once_and_stores_only_its_hash(tmp_path):
    import hashlib

    from click.testing import CliRunner
    from sqlalchemy import create_engine, text

    from speakerdb.cli import cli

    url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "frontdesk", "--scope", "verify", "--db", url])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("sdb_") and len(secret) > 40 and "\n" not in secret
    assert "shown only now" in made.stderr
    listed = runner.invoke(cli, ["keys", "list", "--db", url, "--json"])
    assert listed.exit_code == 0 and secret not in listed.stdout
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "frontdesk" and entry["scopes"] == ["verify"]
    assert secret.startswith(entry["prefix"]) and len(entry["prefix"]) < 16
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys")).one()._asdict()
    engine.dispose()
    assert row["key_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in str(value) for value in row.values())
    twice = runner.invoke(cli, ["keys", "create", "frontdesk", "--scope", "read", "--db", url])
    assert twice.exit_code == 2 and "already exists" in twice.stderr
    unknown = runner.invoke(cli, ["keys", "create", "x", "--scope", "root", "--db", url])
    assert unknown.exit_code == 2 and "unknown scope 'root'" in unknown.stderr
    both = runner.invoke(
        cli, ["keys", "create", "ops", "--scope", "read,enroll", "--db", url, "--json"]
    )
    assert json.loads(both.stdout)["scopes"] == ["verify", "identify", "enroll"]
    with SpeakerDB.open(url) as db:
        assert db.authenticate(secret).name == "frontdesk"
        assert db.authenticate(secret + "x") is None and db.authenticate("") is None
    revoked = runner.invoke(cli, ["keys", "revoke", "frontdesk", "--db", url])
    assert revoked.exit_code == 0
    with SpeakerDB.open(url) as db:
        assert db.authenticate(secret) is None
    again = runner.invoke(cli, ["keys", "revoke", "frontdesk", "--db", url])
    assert again.exit_code == 2 and "no API key named 'frontdesk'" in again.stderr


# --- the CLI against a server ---------------------------------------------------------------------


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # the client is the same
def test_cli_verify_and_identify_with_server_answer_like_the_local_commands(served, voices):
    from click.testing import CliRunner

    from speakerdb.cli import cli

    p225, p226 = voices["p225"], voices["p226"]
    name = f"gus-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin:
        assert admin.post(f"/v1/speakers/{name}/enroll", files=upload(p225[:3])).status_code == 201
    runner = CliRunner()
    keyed = {"SPEAKERDB_API_KEY": served.keys["admin"]}

    def run(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(cli, [*args, "--server", served.server.url], env=env or keyed)

    local = runner.invoke(cli, ["verify", name, str(p225[5]), "--db", served.url, "--json"])
    remote = run("verify", name, str(p225[5]), "--json")
    assert local.exit_code == remote.exit_code == 0, remote.output
    here, there = json.loads(local.stdout), json.loads(remote.stdout)
    assert there["decision"] == "ACCEPT" and there["source"] == f"upload:{p225[5].name}"
    assert there["score"] == pytest.approx(here["score"], abs=1e-5)
    assert {
        k: v for k, v in there.items() if k not in ("source", "score", "cosine", "decision")
    } == {k: v for k, v in here.items() if k not in ("source", "score", "cosine")}
    both = run("verify", name, str(p225[6]), str(p226[0]))
    assert both.exit_code == 1 and both.stdout.startswith("ACCEPTED")
    assert "REJECTED" in both.stdout.splitlines()[1]
    missing = run("verify", "nobody-here", str(p225[5]))
    assert missing.exit_code == 2 and "no enrolled speaker named 'nobody-here'" in missing.stderr
    refused = run("verify", name, str(p225[5]), env={"SPEAKERDB_API_KEY": "sdb_wrong"})
    assert refused.exit_code == 2 and "unauthorized" in refused.stderr
    identified = run("identify", str(p225[7]), "--json")
    assert identified.exit_code == 0 and json.loads(identified.stdout)["best"] == name
    with served.client("admin") as admin:
        admin.delete(f"/v1/speakers/{name}")
