"""``speakerdb serve`` against what issue 16 found from outside: keys stay required once
any existed, DNS rebinding and cross-site requests, bodies refused before they are read
and never spooled to a disk, readiness and error messages after another process's ``db
reembed``, what each key scope may read, slow and silent connections, and the
``--server`` client facing a server that answers too much or the wrong thing.

Real ``speakerdb serve`` processes on 127.0.0.1 (SQLite and PostgreSQL where a store is
involved), raw sockets where the test must control the bytes; nothing waits on the clock
except bounded loops that end on an event (an answer, a closed socket, a file descriptor).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers import by_speaker, require_data
from service_helpers import Server, multipart, upload
from speakerdb import SpeakerDB

pytest.importorskip("fastapi", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
NEMO = ROOT / "tests" / "fixtures" / "models" / "nemo" / "titanet-small.nemo"
SCOPES = ("admin", "verify", "identify", "read", "enroll")
EVENT_DEADLINE_S = 120  # only a server that never does what is awaited takes this long


@dataclass
class Served:
    server: Server
    url: str
    keys: dict[str, str]
    env: dict[str, str]

    def client(self, scope: str | None = "admin", **headers: str) -> httpx.Client:
        client = self.server.client(self.keys[scope] if scope else None)
        client.headers.update(headers)
        return client


def make_keys(url: str) -> dict[str, str]:
    with SpeakerDB.open(url) as db:
        return {scope: db.create_key(scope, [scope]).secret for scope in SCOPES}


@pytest.fixture(scope="module")
def voices():
    require_data()
    return {name: sorted(files) for name, files in by_speaker("vctk").items()}


@contextlib.contextmanager
def database(request, folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(url, environment for servers) of a fresh database of the kind ``request.param``."""
    env = os.environ.copy()
    if request.param == "sqlite":
        yield f"sqlite:///{folder / 'service.sqlite'}", env
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from conftest import PG_URL

    admin = request.getfixturevalue("pg_admin")
    name = f"speakerdb_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    env["SPEAKERDB_INDEX_DIR"] = str(folder / "index-cache")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False), env
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request, tmp_path):
    """A fresh database of each kind for one test: (url, environment for servers)."""
    with database(request, tmp_path) as found:
        yield found


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def guarded(request, tmp_path_factory, voices):
    """A server with one key per scope, its temporary folder and upload folder watched,
    and p225 enrolled through the library (so its recordings' sources are server paths)."""
    folder = tmp_path_factory.mktemp(f"guarded-{request.param}")
    with database(request, folder) as (url, env):
        keys = make_keys(url)
        with SpeakerDB.open(url) as db:
            db.enroll("p225", voices["p225"][:3], metadata={"team": "support"})
        (folder / "tmp").mkdir()
        (folder / "uploads").mkdir()
        env["TMPDIR"] = str(folder / "tmp")
        server = Server(url, "--timeout", "10", "--upload-dir", str(folder / "uploads"), env=env)
        try:
            yield Served(server, url, keys, env)
        finally:
            server.stop()


def speakerdb_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "speakerdb", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


# --- 4: keys stay required --------------------------------------------------------------------


def test_revoking_every_key_keeps_the_server_closed_after_a_restart(fresh):
    url, env = fresh
    with SpeakerDB.open(url) as db:
        db.create_key("only", ["admin"])
        db.revoke_key("only")
        assert db.api_keys() == []
    with Server(url, env=env) as server, server.client() as anonymous:
        refused = anonymous.get("/v1/speakers")
        assert refused.status_code == 401, refused.text
        assert anonymous.get("/healthz").status_code == 200
        assert any("every API key was revoked" in line for line in server.stderr)
    # Only the owner's explicit decision opens it again, and not while a key exists.
    with SpeakerDB.open(url) as db:
        db.create_key("again", ["verify"])
    refused = speakerdb_cli("keys", "allow-keyless", "--db", url, env=env)
    assert refused.returncode == 2 and "revoke them first" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert speakerdb_cli("keys", "revoke", "again", "--db", url, env=env).returncode == 0
    allowed = speakerdb_cli("keys", "allow-keyless", "--db", url, env=env)
    assert allowed.returncode == 0, allowed.stderr
    with Server(url, env=env) as server, server.client() as anonymous:
        assert anonymous.get("/v1/speakers").status_code == 200


def test_the_upgrade_marks_a_database_with_keys_as_requiring_them(fresh):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from speakerdb.storage._migrate import alembic_config

    url, env = fresh
    with SpeakerDB.open(url) as db:
        db.create_key("old", ["admin"])
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0007")
        with engine.connect() as conn:
            assert "keys_required" not in {
                c["name"] for c in inspect(conn).get_columns("store_state")
            }
    finally:
        engine.dispose()
    upgraded = speakerdb_cli("db", "upgrade", "--db", url, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    with SpeakerDB.open(url) as db:
        db.revoke_key("old")
        assert db.api_keys_required()


# --- 5: DNS rebinding, cross-site requests -------------------------------------------------------


def test_dns_rebinding_and_cross_site_requests_are_refused(fresh, voices):
    url, env = fresh
    p225, p226 = voices["p225"], voices["p226"]
    with Server(url, env=env) as server:
        port = server.address[1]
        with server.client() as local:
            created = local.post("/v1/speakers/alice/enroll", files=upload(p225[:3]))
            assert created.status_code == 201, created.text
            for host in (
                "rebind.attacker.example",
                f"rebind.attacker.example:{port}",
                "127.0.0.1:1",
                f"localhost.attacker.example:{port}",
            ):
                for path in ("/healthz", "/readyz", "/metrics", "/v1/speakers", "/docs"):
                    answer = local.get(path, headers={"Host": host})
                    assert answer.status_code == 400, (host, path, answer.text)
                    assert answer.json()["error"]["code"] == "bad_host"
                rebound = local.post(
                    "/v1/speakers/alice/enroll",
                    files=upload(p226[:3]),
                    data={"mode": "overwrite"},
                    headers={"Host": host},
                )
                assert rebound.status_code == 400, rebound.text
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
                assert local.get("/v1/speakers", headers={"Host": host}).status_code == 200, host

            # A page elsewhere makes the browser send a form: refused, alice untouched.
            before = local.get("/v1/speakers/alice").json()
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": "null"},
                {"Origin": f"http://localhost:{port + 1}"},
                {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"},
                {"Referer": "http://evil.example/page.html"},
            ):
                attack = local.post(
                    "/v1/speakers/alice/enroll",
                    files=upload(p226[:3]),
                    data={"mode": "overwrite"},
                    headers=headers,
                )
                assert attack.status_code == 403, (headers, attack.text)
                assert attack.json()["error"]["code"] == "cross_origin"
                deleting = local.delete("/v1/speakers/alice", headers=headers)
                assert deleting.status_code == 403, headers
                assert (
                    local.post(
                        "/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=headers
                    ).status_code
                    == 403
                )
            assert local.get("/v1/speakers/alice").json() == before
            assert local.get("/v1/keys").json() == []
            # Its own pages (the /docs UI) and programs are served.
            for headers in (
                {"Origin": f"http://127.0.0.1:{port}"},
                {"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{port}"},
                {"Referer": f"http://127.0.0.1:{port}/docs"},
            ):
                same = local.post(
                    "/v1/speakers/alice/verify", files=upload(p225[5:6]), headers=headers
                )
                assert same.status_code == 200 and same.json()["decision"] == "ACCEPT", headers


def test_allowed_host_names_are_served(sqlite_url):
    """A name a reverse proxy forwards, given with --allowed-host (any case, any port)."""
    with Server(sqlite_url, "--allowed-host", "Voice.Internal") as server, server.client() as c:
        for host in ("voice.internal", "VOICE.internal:443", f"localhost:{server.address[1]}"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        assert c.get("/healthz", headers={"Host": "other.internal"}).status_code == 400
        # Its pages' origin is its own: the request reaches the route (422: no recording).
        page = c.post(
            "/v1/identify", headers={"Host": "voice.internal", "Origin": "https://voice.internal"}
        )
        assert page.status_code == 422, page.text
        elsewhere = c.post("/v1/identify", headers={"Origin": "https://other.internal"})
        assert elsewhere.status_code == 403


def test_cross_site_requests_are_refused_with_keys_too(guarded, voices):
    with guarded.client("admin", Origin="http://evil.example") as admin:
        refused = admin.post("/v1/speakers/p225/verify", files=upload(voices["p225"][5:6]))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_origin"
        assert admin.delete("/v1/speakers/p225").status_code == 403
        assert admin.get("/v1/speakers/p225").status_code == 200  # reads: the browser's SOP
    with guarded.client("admin") as admin:
        assert admin.get("/v1/speakers/p225").json()["utterances"] == 3


# --- 6: authenticated before the body is read; nothing on a disk ----------------------------------


def _raw_post(address, path: str, length: int, key: str | None) -> socket.socket:
    host, port = address
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: multipart/form-data; boundary=b0undary",
        f"Content-Length: {length}",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    connection = socket.create_connection(address, timeout=EVENT_DEADLINE_S)
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return connection


def _answer_head(connection: socket.socket) -> tuple[int, bytes]:
    """Status and raw answer read until the end of its JSON body (the server may keep the
    connection open or close it)."""
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_a_refused_upload_is_answered_before_its_body_is_read(guarded):
    size = 45 * 1024 * 1024
    cases = [
        (None, 401, "unauthorized"),
        ("sdb_not-a-key", 401, "unauthorized"),
        (guarded.keys["verify"], 403, "forbidden"),
    ]
    for key, status, code in cases:
        with _raw_post(guarded.server.address, "/v1/speakers/p225/enroll", size, key) as conn:
            # Not a byte of the body sent: the answer comes all the same.
            got, data = _answer_head(conn)
            assert got == status and f'"code":"{code}"'.encode() in data, data
            assert b"connection: close" in data.lower()
            sent = 0
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):  # reset or broken pipe: the server hung up
                while sent < size:
                    sent += conn.send(chunk)
            assert sent < size // 2, sent  # socket buffers, not the body, took what was sent
    with guarded.client("admin") as admin:
        assert admin.get("/v1/speakers/p225").json()["utterances"] == 3


def _files_under(pid: int, folder: Path) -> list[str]:
    """What the process has open under ``folder`` (deleted files included)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                found.append(target)
    return found


def _unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes the server's kernel holds for the server process on this connection (the
    rx_queue of /proc/net/tcp), None while the connection is not listed."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            return int(fields[4].split(":")[1], 16)
    return None


def test_uploads_never_reach_a_temporary_file(guarded, voices, tmp_path):
    """A 3 MB recording part (Starlette writes parts over 1 MB to the temporary folder):
    while the server holds all but the end of the body, it has nothing open in the
    temporary folder; afterwards the upload folder is empty."""
    import numpy as np
    import soundfile as sf

    speech, rate = sf.read(voices["p225"][0], dtype="float32")
    long_wav = tmp_path / "long.wav"  # float samples, 3 MB
    seconds = 3_000_000 // (4 * rate)
    sf.write(long_wav, np.tile(speech, 100)[: seconds * rate], rate, subtype="FLOAT")
    body, content_type = multipart(upload([long_wav]))
    assert len(body) > 2_500_000
    tmpdir = Path(guarded.env["TMPDIR"])
    args = guarded.server.process.args
    uploads = Path(args[args.index("--upload-dir") + 1])
    pid = guarded.server.process.pid
    host, port = guarded.server.address
    head = (
        f"POST /v1/identify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}"
        f"\r\nContent-Length: {len(body)}\r\nAuthorization: Bearer {guarded.keys['admin']}"
        "\r\n\r\n"
    ).encode()
    held_back = 200  # the closing boundary: the form cannot be complete without it
    with socket.create_connection((host, port), timeout=EVENT_DEADLINE_S) as conn:
        conn.sendall(head + body[:-held_back])
        client_port = conn.getsockname()[1]
        # Until the server has read everything sent (or opened a file there).
        spooled: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < EVENT_DEADLINE_S:
            spooled = _files_under(pid, tmpdir)
            if spooled or _unread_bytes(port, client_port) == 0:
                break
            select.select([], [], [], 0.05)  # pace the polling; the event ends the loop
        assert _unread_bytes(port, client_port) == 0 or spooled
        spooled += _files_under(pid, tmpdir)
        assert spooled == [], spooled
        conn.sendall(body[-held_back:])
        status, data = _answer_head(conn)
    assert status == 200, data
    assert list(uploads.iterdir()) == [] and _files_under(pid, tmpdir) == []
    assert list(tmpdir.iterdir()) == []


# --- 12: readiness and messages after another process's db reembed -------------------------------


def _leaks(text: str, *secrets: str) -> list[str]:
    found = [s for s in secrets if s and s in text]
    found += re.findall(r"(?<![\w.~/-])/[^\s'\"/]+/[^\s'\"]*", text)  # any absolute path
    found += re.findall(r"[a-z][a-z0-9+.-]*://", text)  # any URL
    return found


def test_after_another_process_reembeds_readyz_says_not_ready_and_nothing_leaks(fresh, voices):
    url, env = fresh
    with SpeakerDB.open(url, model="ge2e", device="cpu") as db:
        db.enroll("p225", voices["p225"][:3])
        keys = {
            "verify": db.create_key("v", ["verify"]).secret,
            "identify": db.create_key("i", ["identify"]).secret,
        }
    sqlite_path = url.removeprefix("sqlite:///") if url.startswith("sqlite") else None
    with Server(url, env=env) as server, server.client() as anonymous:
        assert anonymous.get("/readyz").status_code == 200
        with server.client(keys["verify"]) as verifier:
            ok = verifier.post("/v1/speakers/p225/verify", files=upload(voices["p225"][5:6]))
            assert ok.json()["decision"] == "ACCEPT"
        switched = speakerdb_cli(
            "db", "reembed", "--model", str(NEMO), "--db", url, "--device", "cpu", "--json", env=env
        )
        assert switched.returncode == 0, switched.stderr
        for _ in range(2):  # the first look notices the switch; the second must agree
            ready = anonymous.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["model"]["status"] == "mismatch"
            assert _leaks(ready.text, url, str(NEMO), sqlite_path) == []
        answers = []
        with server.client(keys["verify"]) as verifier, server.client(keys["identify"]) as ident:
            probe = upload(voices["p225"][5:6])
            answers.append(verifier.post("/v1/speakers/p225/verify", files=probe))
            answers.append(ident.post("/v1/identify", files=upload(voices["p225"][6:7])))
            # File against file needs no enrolled voiceprint: still answered.
            both = upload(voices["p225"][:1], "a") + upload(voices["p225"][1:2], "b")
            assert verifier.post("/v1/compare", files=both).json()["decision"] == "ACCEPT"
        for answer in answers:
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["code"] == "model_mismatch"
            assert _leaks(answer.text, url, str(NEMO), sqlite_path, "titanet") == [], answer.text
        assert anonymous.get("/readyz").status_code == 503
    # The operator reads what happened in the server's log.
    assert any("model_mismatch" in line for line in server.stderr)


# --- 13: least privilege per scope ---------------------------------------------------------------

# route -> the scopes admitted (None: no key needed); the request is one that the route
# refuses after authentication (422, 404 ...) or answers cheaply, so that admitted and
# refused are told apart by the status alone.
MATRIX = [
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("POST", "/v1/speakers/p225/verify", {"verify", "read", "admin"}),
    ("POST", "/v1/compare", {"verify", "read", "admin"}),
    ("POST", "/v1/identify", {"identify", "read", "admin"}),
    ("POST", "/v1/speakers/nobody/enroll", {"enroll", "admin"}),
    ("GET", "/v1/speakers", {"verify", "identify", "read", "admin"}),
    ("GET", "/v1/speakers/p225", {"verify", "identify", "read", "admin"}),
    ("POST", "/v1/speakers/nobody/rename", {"admin"}),
    ("DELETE", "/v1/speakers/nobody", {"admin"}),
    ("GET", "/v1/keys", {"admin"}),
    ("POST", "/v1/keys", {"admin"}),
    ("DELETE", "/v1/keys/nobody", {"admin"}),
]


def test_the_scope_matrix(guarded):
    for method, path, admitted in MATRIX:
        for scope in (None, *SCOPES):
            json_body = path == "/v1/keys" or path.endswith("/rename")
            with guarded.client(scope) as client:
                got = client.request(method, path, json={} if json_body else None)
            if admitted is None:
                assert got.status_code == 200, (method, path, scope, got.text)
            elif scope is None:
                assert got.status_code == 401, (method, path, scope)
            elif scope in admitted:
                assert got.status_code not in (401, 403), (method, path, scope, got.text)
            else:
                assert got.status_code == 403, (method, path, scope, got.text)


def test_each_scope_reads_only_what_it_needs(guarded, voices):
    paths = [str(p) for p in voices["p225"][:3]]
    with guarded.client("admin") as admin:
        shown = admin.get("/v1/speakers/p225").json()
        assert shown["metadata"] == {"team": "support"}
        assert {r["source"] for r in shown["recordings"]} == set(paths)
        hashes = {r["sha256"] for r in shown["recordings"]}
        assert len(hashes) == 3
        listed = admin.get("/v1/speakers").json()
        assert listed[0]["metadata"] == {"team": "support"}
    for scope in ("verify", "identify", "read"):
        with guarded.client(scope) as reader:
            listed = reader.get("/v1/speakers")
            shown = reader.get("/v1/speakers/p225")
        for answer in (listed, shown):
            assert answer.status_code == 200
            assert not any(p in answer.text for p in paths), (scope, answer.text)
            assert not any(h in answer.text for h in hashes), (scope, answer.text)
            assert "support" not in answer.text and "metadata" not in answer.text
        assert listed.json() == [{"name": "p225", "status": "active", "utterances": 3}]
        assert shown.json() == {"name": "p225", "status": "active", "utterances": 3}
    with guarded.client(None) as anonymous:
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        # Whether a lookup would be answered; nothing of how many speakers there are.
        assert checks["database"] == {"status": "ok"}
        assert set(checks["index"]) <= {"status", "rebuilding"}
        assert set(checks["model"]) == {"status", "name"}


# --- 17: slow and silent connections --------------------------------------------------------------


def test_slow_and_silent_connections_are_closed(sqlite_url):
    with Server(sqlite_url, "--timeout", "2") as server:
        address = server.address
        trickling = [socket.create_connection(address) for _ in range(10)]
        silent = [socket.create_connection(address) for _ in range(10)]
        kept_alive = socket.create_connection(address)
        for conn in trickling:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        # One answered request, then the next one's headers come a line at a time.
        host = f"{address[0]}:{address[1]}"
        kept_alive.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert _answer_head(kept_alive)[0] == 200
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")
        trickling.append(kept_alive)
        open_ = {conn: "trickle" for conn in trickling} | {conn: "silent" for conn in silent}
        started = time.monotonic()
        try:
            while open_ and time.monotonic() - started < EVENT_DEADLINE_S:
                # Wait for the server to hang up on someone; trickle a header line meanwhile.
                readable, _, _ = select.select(list(open_), [], [], 0.5)
                for conn in readable:
                    with contextlib.suppress(OSError):
                        if conn.recv(4096):
                            continue  # an answer: not closed (yet)
                    del open_[conn]
                for conn, kind in list(open_.items()):
                    if kind == "trickle":
                        try:
                            conn.sendall(b"X-Slow: 1\r\n")
                        except OSError:
                            del open_[conn]
            assert not open_, f"{len(open_)} connections still open"
        finally:
            for conn in trickling + silent:
                conn.close()
        with server.client() as client:
            assert client.get("/healthz").status_code == 200


# --- 18: the --server client ---------------------------------------------------------------------


class Misbehaving:
    """An ASGI app answering the client's lookups wrongly, by speaker name."""

    def __init__(self) -> None:
        # Bytes handed to the server per speaker name asked for: counted per name
        # because an earlier answer may still be draining when the next request starts.
        self.streamed: dict[str, int] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the upload, read and dropped
            message = await receive()
            more = message.get("more_body", False)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await self._answer(scope, send, gone)
        finally:
            watcher.cancel()

    async def _answer(self, scope, send, gone) -> None:
        name = scope["path"].split("/")[3] if scope["path"].startswith("/v1/speakers/") else ""
        huge = 300 * 1024 * 1024
        if name in ("huge", "declared"):
            headers = [(b"content-type", b"application/json")]
            if name == "declared":
                headers.append((b"content-length", str(huge).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            chunk = b" " * (1 << 20)
            sent = 0
            while sent < huge and not gone.is_set():
                sent += len(chunk)
                self.streamed[name] = sent
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # uvicorn's send returns at once on a closed connection without
                # yielding: let the disconnect watcher run.
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b""})
            return
        status, body = {
            "missing": (200, b'{"decision": "ACCEPT"}'),
            "empty": (200, b"[]"),
            "types": (
                200,
                b'{"accepted": "yes", "speaker": "x", "source": "s", "score": 1, "threshold": 0.5}',
            ),
            "badlist": (200, b"[1, 2]"),
            "html": (200, b"<html>hello</html>"),
            "errortext": (401, b'{"error": "nope"}'),
            "created": (201, b"{}"),
        }.get(name, (200, b'{"best": 5, "matches": "x", "source": 1, "threshold": null}'))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def asgi_server(app) -> Iterator[str]:
    """``app`` on a real uvicorn on 127.0.0.1 in a thread (its socket listens before the
    thread starts: connections wait in the kernel's queue until it serves)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(EVENT_DEADLINE_S)
        sock.close()


def test_the_server_client_refuses_huge_and_malformed_answers(tmp_path):
    from click.testing import CliRunner

    from speakerdb.cli import cli

    recording = tmp_path / "call.wav"
    recording.write_bytes(b"RIFF not really")
    app = Misbehaving()
    runner = CliRunner()
    with asgi_server(app) as url:
        for name in (
            "declared",
            "huge",
            "missing",
            "empty",
            "types",
            "badlist",
            "html",
            "errortext",
            "created",
        ):
            result = runner.invoke(
                cli,
                ["verify", name, str(recording), "--server", url],
                env={"SPEAKERDB_API_KEY": "sdb_x"},
            )
            assert result.exit_code == 2, (name, result.output)
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
                name,
                result.stderr,
            )
            assert "internal error" not in result.stderr, (name, result.stderr)
            if name in ("declared", "huge"):
                assert "larger than any of its answers" in result.stderr
                # The client stopped reading: far less than the 300 MB was ever sent.
                assert app.streamed.get(name, 0) < 100 * 1024 * 1024, app.streamed
        identified = runner.invoke(cli, ["identify", str(recording), "--server", url])
        assert identified.exit_code == 2 and identified.stderr.startswith("error: ")
        assert "internal error" not in identified.stderr and identified.stderr.count("\n") == 1
