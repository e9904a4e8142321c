"""Issue 16, defects 2 and 7 over HTTP: real ``speakerdb serve`` processes (uvicorn on
127.0.0.1) on SQLite and PostgreSQL, httpx as the client, real speech.

Defect 2: a key with the enroll scope cannot take over an identity -- overwriting needs the
admin scope; appending another voice is refused (409) with nothing stored, unless an admin
forces it. Defect 7: metadata a client cannot read back is refused with a 400 (never a
500), and metadata stored unchecked by an earlier release does not break listings."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy import text as sql
from sqlalchemy.engine import make_url

from helpers import by_speaker, require_data
from service_helpers import Server, upload
from speakerdb import SpeakerDB

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")

SCOPES = ("admin", "verify", "enroll")


@dataclass
class Served:
    server: Server
    url: str
    keys: dict[str, str]

    def client(self, scope: str) -> httpx.Client:
        return self.server.client(self.keys[scope])


@pytest.fixture(scope="module")
def voices():
    require_data()
    groups = by_speaker("vctk")
    return groups["p225"], groups["p228"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory, voices):
    folder = tmp_path_factory.mktemp(f"store-safety-{request.param}")
    env = os.environ.copy()
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'service.sqlite'}"
    else:
        from conftest import PG_URL

        admin = request.getfixturevalue("pg_admin")
        name = f"speakerdb_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sql(f'CREATE DATABASE "{name}"'))
        env["SPEAKERDB_INDEX_DIR"] = str(folder / "index-cache")
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    try:
        with SpeakerDB.open(url) as db:
            keys = {scope: db.create_key(scope, [scope]).secret for scope in SCOPES}
        server = Server(url, env=env)
    except BaseException:
        if drop is not None:
            drop()
        raise
    yield Served(server, url, keys)
    server.stop()
    if drop is not None:
        drop()


def _shown(client: httpx.Client, name: str) -> tuple:
    answer = client.get(f"/v1/speakers/{name}")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    return document["utterances"], [r["sha256"] for r in document["recordings"]]


# --- defect 2 -----------------------------------------------------------------------------------


def test_an_enroll_key_cannot_take_over_an_identity(served, voices):
    bob, intruder = voices
    name = f"bob-{uuid.uuid4().hex[:6]}"
    path = f"/v1/speakers/{name}/enroll"
    with served.client("enroll") as enroller, served.client("admin") as admin:
        created = enroller.post(path, files=upload(bob[:4]))
        assert created.status_code == 201, created.text
        before = _shown(admin, name)

        overwrite = enroller.post(path, files=upload(intruder[:3]), data={"mode": "overwrite"})
        assert overwrite.status_code == 403, overwrite.text
        assert overwrite.json()["error"]["code"] == "forbidden"
        assert _shown(admin, name) == before

        appended = enroller.post(path, files=upload(intruder[:5]))
        assert appended.status_code == 409, appended.text
        document = appended.json()
        assert document["error"]["code"] == "enrollment_refused"
        assert document["refused"] == 5 and document["changed"] is False
        assert {i["reason"] for i in document["inputs"]} == {"voiceprint_mismatch"}
        assert _shown(admin, name) == before

        forced = enroller.post(path, files=upload(intruder[:5]), data={"force": "true"})
        assert forced.status_code == 403, forced.text
        assert _shown(admin, name) == before

        with served.client("verify") as verifier:
            genuine = verifier.post(f"/v1/speakers/{name}/verify", files=upload(bob[6:7]))
            impostor = verifier.post(f"/v1/speakers/{name}/verify", files=upload(intruder[6:7]))
        assert genuine.json()["decision"] == "ACCEPT", genuine.text
        assert impostor.json()["decision"] == "REJECT", impostor.text

        more = enroller.post(path, files=upload(bob[4:6]))
        assert more.status_code == 200 and more.json()["accepted"] == 2, more.text

        # The administrator may do both.
        forced = admin.post(path, files=upload(intruder[:2]), data={"force": "true"})
        assert forced.status_code == 200 and forced.json()["accepted"] == 2, forced.text
        replaced = admin.post(path, files=upload(bob[:3]), data={"mode": "overwrite"})
        assert replaced.status_code == 200 and replaced.json()["utterances"] == 3, replaced.text


# --- defect 7 -----------------------------------------------------------------------------------


def _nested_text(levels: int) -> str:
    return '{"a": ' * (levels - 1) + "{}" + "}" * (levels - 1)


def test_bad_metadata_is_a_400_and_listings_keep_working(served, voices):
    bob, _ = voices
    name = f"meta-{uuid.uuid4().hex[:6]}"
    path = f"/v1/speakers/{name}/enroll"
    with served.client("admin") as admin:
        assert admin.post(path, files=upload(bob[:1])).status_code == 201
        before = _shown(admin, name)
        for metadata in (
            '{"a": "\\ud800"}',
            _nested_text(900),
            _nested_text(50_000),
            json.dumps({"a": "x" * 70_000}),
        ):
            answer = admin.post(path, files=upload(bob[1:2]), data={"metadata": metadata})
            assert answer.status_code == 400, (metadata[:40], answer.status_code, answer.text)
            assert answer.json()["error"]["code"] == "usage"
        assert _shown(admin, name) == before
        listing = admin.get("/v1/speakers")
        assert listing.status_code == 200, listing.text


def test_metadata_stored_unchecked_does_not_break_listings(served, voices):
    bob, _ = voices
    name = f"legacy-{uuid.uuid4().hex[:6]}"
    with served.client("admin") as admin:
        assert admin.post(f"/v1/speakers/{name}/enroll", files=upload(bob[:1])).status_code == 201
    engine = create_engine(make_url(served.url))
    try:
        with engine.begin() as conn:
            value = "CAST(:raw AS json)" if engine.dialect.name == "postgresql" else ":raw"
            conn.execute(
                sql(f"UPDATE speakers SET metadata = {value} WHERE name = :name"),
                {"raw": '{"a": "\\ud800"}', "name": name},
            )
    finally:
        engine.dispose()
    with served.client("admin") as admin:
        listing = admin.get("/v1/speakers")
        assert listing.status_code == 200, listing.text
        row = next(s for s in listing.json() if s["name"] == name)
        assert row["metadata"] is None and "surrogate" in row["metadata_error"]
        shown = admin.get(f"/v1/speakers/{name}")
        assert shown.status_code == 200 and shown.json()["metadata_error"], shown.text
