"""The server-wide cap on live sessions (speakerdb/service/_slots.py): lock-file slots shared
by every worker process, freed by the kernel when a holder dies."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap

import pytest

from speakerdb import SpeakerDB
from speakerdb.service._slots import SessionSlots


def test_slots_cap_release_and_reuse(tmp_path):
    slots = SessionSlots(2, tmp_path)
    first, second = slots.acquire(), slots.acquire()
    assert first is not None and second is not None
    assert slots.acquire() is None  # both held
    first.release()
    first.release()  # idempotent: never closes a descriptor twice
    third = slots.acquire()
    assert third is not None
    assert slots.acquire() is None
    second.release()
    third.release()
    assert {p.name for p in tmp_path.iterdir()} == {"slot-0", "slot-1"}
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_users_of_one_directory_share_the_cap(tmp_path):
    # Two workers' SessionSlots on the server's directory: one cap, not one each.
    a, b = SessionSlots(2, tmp_path), SessionSlots(2, tmp_path)
    held = [a.acquire(), b.acquire()]
    assert all(s is not None for s in held)
    assert a.acquire() is None and b.acquire() is None
    held[0].release()  # type: ignore[union-attr]
    assert b.acquire() is not None


def test_a_dead_holder_frees_its_slot(tmp_path):
    """Another process holds the only slot; once it is killed (no clean-up of its own), the
    slot is free: nothing to repair after a worker crash."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from speakerdb.service._slots import SessionSlots
                slot = SessionSlots(1, {str(tmp_path)!r}).acquire()
                print("held" if slot is not None else "refused", flush=True)
                sys.stdin.read()  # until the test kills it
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        slots = SessionSlots(1, tmp_path)
        assert slots.acquire() is None
    finally:
        child.kill()
        child.wait()
    assert slots.acquire() is not None


def test_a_private_directory_is_made_on_first_use_and_removed(tmp_path):
    slots = SessionSlots(1)
    slot = slots.acquire()
    assert slot is not None
    folder = slots._folder
    assert folder is not None and folder.is_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    slot.release()
    slots.close()
    assert not folder.exists()
    with pytest.raises(ValueError):
        SessionSlots(0)


def test_the_cap_holds_over_every_worker(tmp_path):
    """``serve --workers 2 --max-sessions 1``: while one session runs, every other is refused
    with 429, whichever worker takes it (before, each worker counted its own: 2 ran); once
    it ends, the next is admitted."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.service_helpers import Server

    url = f"sqlite:///{tmp_path / 'slots.sqlite'}"
    with SpeakerDB.open(url) as db:
        secret = db.create_key("identify", ["identify"]).secret
    headers = {"Authorization": f"Bearer {secret}"}
    with Server(url, "--workers", "2", "--max-sessions", "1") as server:
        # Both workers answer before the sessions start (one connection: one worker).
        pids: set[int] = set()
        for _ in range(500):
            with server.client(secret) as fresh:
                pids.add(fresh.get("/healthz").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2
        ws_url = server.url.replace("http://", "ws://") + "/v1/sessions?mode=identify"
        with connect(ws_url, additional_headers=headers) as first:
            refused = 0
            for _ in range(40):  # new connections land on either worker
                with pytest.raises(InvalidStatus) as refusal:
                    connect(ws_url, additional_headers=headers)
                assert refusal.value.response.status_code == 429
                assert json.loads(refusal.value.response.body)["error"]["code"] == "busy"
                refused += 1
            assert refused == 40
            first.send(json.dumps({"sample_rate": 16000, "encoding": "pcm_s16le"}))
            first.send(json.dumps({"type": "end"}))
            frames = []
            for message in first:  # until the server closes
                frames.append(json.loads(message))
            assert frames[-1]["type"] == "summary"
        # The slot was freed before the close frame: the next session is admitted at once.
        with connect(ws_url, additional_headers=headers) as again:
            again.send(json.dumps({"sample_rate": 16000, "encoding": "pcm_s16le"}))
            again.send(json.dumps({"type": "end"}))
            assert [json.loads(m) for m in again][-1]["type"] == "summary"
