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


def private_dir(tmp_path):
    folder = tmp_path / "slots"
    folder.mkdir(mode=0o700)
    return folder


@pytest.mark.parametrize("shared", [True, False], ids=["directory", "in-process"])
def test_slots_cap_release_and_reuse(tmp_path, shared):
    folder = private_dir(tmp_path) if shared else None
    slots = SessionSlots(2, folder)
    first, second = slots.acquire(), slots.acquire()
    assert first is not None and second is not None
    assert slots.acquire() is None  # both held
    first.release()
    first.release()  # idempotent: never gives a slot back twice
    with slots.acquire() as third:  # type: ignore[union-attr]
        assert slots.acquire() is None
    second.release()
    assert third is not None
    again = [slots.acquire(), slots.acquire()]
    assert None not in again
    for slot in again:
        slot.release()  # type: ignore[union-attr]
    slots.close()
    if folder is not None:
        assert {p.name for p in folder.iterdir()} == {"slot-0", "slot-1"}
        for path in folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_users_of_one_directory_share_the_cap(tmp_path):
    # Two workers' SessionSlots on the server's directory: one cap, not one each.
    folder = private_dir(tmp_path)
    a, b = SessionSlots(2, folder), SessionSlots(2, folder)
    held = [a.acquire(), b.acquire()]
    assert None not in held
    assert a.acquire() is None and b.acquire() is None
    held[0].release()  # type: ignore[union-attr]
    with b.acquire() as slot:  # type: ignore[union-attr]
        assert slot is not None and a.acquire() is None
    held[1].release()  # type: ignore[union-attr]
    a.close()
    b.close()


def test_a_dead_holder_frees_its_slot(tmp_path):
    """Another process holds the only slot; once it is killed (no clean-up of its own), the
    slot is free: nothing to repair after a worker crash."""
    import select

    folder = private_dir(tmp_path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from speakerdb.service._slots import SessionSlots
                slot = SessionSlots(1, {str(folder)!r}).acquire()
                print("held" if slot is not None else "refused", flush=True)
                sys.stdin.read()  # until the test kills it
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    slots = SessionSlots(1, folder)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 120)  # a hung child fails
        assert ready and child.stdout.readline().strip() == "held"
        assert slots.acquire() is None
    finally:
        child.kill()
        child.wait()
    with slots.acquire() as slot:  # type: ignore[union-attr]
        assert slot is not None
    slots.close()


def test_only_a_private_directory_of_this_user_is_used(tmp_path):
    import os

    from speakerdb.errors import ConfigurationError

    open_to_all = tmp_path / "open"
    open_to_all.mkdir(mode=0o700)
    open_to_all.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(private_dir(tmp_path))
    for bad in (open_to_all, link, tmp_path / "missing"):
        with pytest.raises(ConfigurationError):
            SessionSlots(1, bad)
    # A slot name that is a symbolic link (to a file it would create) is refused.
    (tmp_path / "other").mkdir()
    folder = private_dir(tmp_path / "other")
    os.symlink(tmp_path / "elsewhere", folder / "slot-0")
    slots = SessionSlots(1, folder)
    with pytest.raises(OSError):
        slots.acquire()
    assert not (tmp_path / "elsewhere").exists()
    slots.close()
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
