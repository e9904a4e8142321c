"""Live sessions (speakerdb.live through SpeakerDB.session): real speech fed in chunks,
decided by the database's rule, compared with the offline answer on the same audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from speakerdb import SpeakerDB
from speakerdb.errors import InvalidAudioError, SessionLimitError, SpeakerNotFoundError, UsageError
from speakerdb.live import (
    ACCEPT,
    IDENTIFIED,
    REJECT,
    UNKNOWN,
    DecisionEvent,
    ErrorEvent,
    SessionLimits,
    SpeakerChange,
)
from tests.helpers import by_speaker

ENROLLED = ("1688", "1998", "2033")
IMPOSTOR = "2609"


def read(path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return samples


@pytest.fixture(scope="module")
def speech():
    """Enrollment files of three read-speech speakers, a held-out file of each, and a file
    of a speaker never enrolled."""
    groups = by_speaker("librispeech")
    return {
        "enroll": {name: groups[name][3:6] for name in ENROLLED},
        "probe": {name: read(groups[name][0]) for name in ENROLLED},
        "impostor": read(groups[IMPOSTOR][2]),
        "stranger": read(groups["2414"][4]),  # another voice nobody enrolled
    }


@pytest.fixture
def db(db_url, model, speech):
    with SpeakerDB.open(db_url, model=model) as opened:
        for name, files in speech["enroll"].items():
            opened.enroll(name, files)
        yield opened


def run(session, samples, rate=16000, chunk_seconds=0.5, dtype="float32"):
    """Feed ``samples`` in chunks; return (events, summary)."""
    if dtype == "int16":
        samples = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
    step = int(chunk_seconds * rate)
    events = []
    for first in range(0, samples.size, step):
        events += session.feed(samples[first : first + step], sample_rate=rate)
    return events, session.close()


def decisions(events):
    return [e for e in events if isinstance(e, DecisionEvent)]


def test_a_genuine_caller_is_accepted_early_and_agrees_with_verify(db, speech):
    probe = speech["probe"]["1688"]
    with db.session(speaker="1688") as session:
        events, summary = run(session, probe)
    offline = db.verify("1688", probe, sample_rate=16000)
    first = decisions(events)[0]
    assert first.decision == ACCEPT and first.speaker == "1688"
    assert first.speech_seconds < summary.speech_seconds  # decided before the end
    assert summary.accepted == offline.accepted
    final = summary.decisions[-1]
    assert final.final and final.decision_rule == offline.decision_rule
    assert final.llr == pytest.approx(offline.llr, abs=0.05)
    # The progress events count speech and say when no decision is possible yet.
    progress = [e for e in events if e.type == "progress"]
    assert progress[0].status == "NOT_ENOUGH_SPEECH"
    assert [p.speech_seconds for p in progress] == sorted(p.speech_seconds for p in progress)
    json.dumps([e.to_dict() for e in events] + [summary.to_dict()])
    # A session is a lookup like verify: one audit entry with its final decision.
    live = [e for e in db.audit_entries(action="verify") if (e.detail or {}).get("live")]
    assert len(live) == 1 and live[0].speaker == "1688" and live[0].decision == "accept"
    assert db.audit_verify().ok


def test_the_speech_detector_hears_each_sample_once(db, speech):
    """At close the detector gets only the samples it has not had: the sub-frame remainder
    it already holds is not pushed a second time (the last frames were judged on repeated
    audio)."""
    probe = speech["probe"]["1688"][: 16000 * 3 + 300]  # not a whole number of frames
    with db.session(speaker="1688") as session:
        pushed: list[int] = []
        push = session._detector.push

        def counting(block):
            pushed.append(block.size)
            return push(block)

        session._detector.push = counting
        run(session, probe, chunk_seconds=0.1)
    assert sum(pushed) == probe.size


def test_an_impostor_is_never_accepted(db, speech):
    with db.session(speaker="1688") as session:
        events, summary = run(session, speech["impostor"], rate=16000, dtype="int16")
    assert [d.decision for d in decisions(events)] == [REJECT]
    assert not summary.accepted and summary.decision == REJECT
    assert not any(d.decision == ACCEPT for d in summary.decisions)


def test_a_hand_over_is_reported_after_the_join(db, speech):
    first, second = speech["probe"]["1688"], speech["probe"]["1998"]
    joined = np.concatenate([first, second])
    join = first.size / 16000
    with db.session() as session:
        events, summary = run(session, joined)
    changes = [e for e in events if isinstance(e, SpeakerChange)]
    assert len(changes) == 1
    assert changes[0].previous == "1688" and changes[0].time > join
    names = [(s.decision, s.speaker) for s in summary.segments]
    assert names == [(IDENTIFIED, "1688"), (IDENTIFIED, "1998")]
    assert summary.segments[0].end == changes[0].window_start


def test_a_hand_over_between_strangers_is_reported_too(db, speech):
    # No name to compare with: the last seconds are compared with the segment's own voice.
    first, second = speech["impostor"], speech["stranger"]
    join = first.size / 16000
    with db.session() as session:
        events, summary = run(session, np.concatenate([first, second]))
    changes = [e for e in events if isinstance(e, SpeakerChange)]
    assert len(changes) == 1 and changes[0].previous is None and changes[0].time > join
    assert [s.decision for s in summary.segments] == [UNKNOWN, UNKNOWN]


def test_a_hand_over_on_a_phone_line_is_reported_within_3_s(db):
    # 8 kHz mu-law speech: raw scores shift with the channel, the change test does not
    # (it compares the last window with the segment's own earlier windows).
    groups = by_speaker("telephone")
    first, rate = sf.read(groups["p227"][3], dtype="float32")
    second, _ = sf.read(groups["p228"][3], dtype="float32")
    assert rate == 8000
    join = first.size / rate
    with db.session() as session:
        events, summary = run(session, np.concatenate([first, second]), rate=rate, dtype="int16")
    changes = [e for e in events if isinstance(e, SpeakerChange)]
    assert len(changes) == 1
    assert join < changes[0].time <= join + 3.0
    assert len(summary.segments) == 2


def test_identify_names_each_enrolled_speaker_and_not_a_stranger(db, speech):
    for name in ENROLLED:
        with db.session() as session:
            _, summary = run(session, speech["probe"][name], rate=16000)
        assert (summary.decision, summary.decisions[-1].speaker) == (IDENTIFIED, name)
        offline = db.identify(speech["probe"][name], sample_rate=16000)
        assert offline.best == name
    with db.session() as session:
        _, summary = run(session, speech["impostor"])
    assert summary.decision == UNKNOWN and not summary.accepted


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_and_int16_reach_the_same_decision(sqlite_url, model, speech, rate):
    from tests.helpers import resample_to

    with SpeakerDB.open(sqlite_url, model=model) as db:
        db.enroll("1688", speech["enroll"]["1688"])
        probe = resample_to(speech["probe"]["1688"], 16000, rate)
        with db.session(speaker="1688") as session:
            _, summary = run(session, probe, rate=rate, dtype="int16", chunk_seconds=0.2)
        quantised = np.clip(np.round(probe * 32767), -32768, 32767).astype(np.int16)
        offline = db.verify("1688", quantised.astype(np.float32) / 32768.0, sample_rate=rate)
    # A phone-band copy may be rejected (the calibration sees its bandwidth): live or not.
    assert summary.accepted == offline.accepted
    assert summary.decisions[-1].llr == pytest.approx(offline.llr, abs=0.3)


def test_bad_input_is_refused_and_changes_nothing(sqlite_url, model, speech):
    probe = speech["probe"]["1688"]
    with SpeakerDB.open(sqlite_url, model=model) as db:
        db.enroll("1688", speech["enroll"]["1688"])
        with pytest.raises(SpeakerNotFoundError):
            db.session(speaker="nobody")
        session = db.session(speaker="1688")
        session.feed(probe[:8000], sample_rate=16000)
        before = (session.time, session.speech_seconds)
        bad = [
            (probe[:800].astype(np.float64), 16000, UsageError),  # wrong dtype
            (np.stack([probe[:800], probe[:800]], axis=1), 16000, InvalidAudioError),  # stereo
            (np.full(800, np.nan, np.float32), 16000, InvalidAudioError),
            (probe[:800], 4000, InvalidAudioError),  # a rate the engine cannot take
            (probe[:800], 8000, UsageError),  # a rate other than the session's
            (probe[:800].tolist(), 16000, UsageError),
        ]
        for chunk, rate, error in bad:
            with pytest.raises(error):
                session.feed(chunk, sample_rate=rate)
            assert (session.time, session.speech_seconds) == before
        _, summary = run(session, probe[8000:])
    assert summary.accepted
    with pytest.raises(UsageError):
        session.feed(probe[:800], sample_rate=16000)


@pytest.mark.parametrize(
    ("limits", "limit"),
    [
        (SessionLimits(max_seconds=3.0), "duration"),
        (SessionLimits(max_bytes=4 * 16000 * 2), "bytes"),
        (SessionLimits(max_silence_seconds=2.0), "silence"),
    ],
)
def test_a_limit_ends_the_session_with_a_fatal_error(sqlite_url, model, speech, limits, limit):
    probe = speech["probe"]["1688"]
    audio = np.concatenate([probe[: 16000 * 2], np.zeros(16000 * 4, np.float32), probe])
    with SpeakerDB.open(sqlite_url, model=model) as db:  # nobody enrolled: identify
        session = db.session(limits=limits)
        events = []
        with pytest.raises(SessionLimitError) as raised:
            for first in range(0, audio.size, 8000):
                events += session.feed(audio[first : first + 8000], sample_rate=16000)
        summary = session.close()
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].fatal and errors[0].error == "limit"
    assert raised.value.limit == limit and summary.reason == f"limit: {limit}"
    assert summary.duration <= 8.0


def test_session_limits_must_be_positive(sqlite_url, model):
    with SpeakerDB.open(sqlite_url, model=model) as db, pytest.raises(UsageError):
        db.session(limits=SessionLimits(max_seconds=0))


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_db(sqlite_url, model, speech):
    with SpeakerDB.open(sqlite_url, model=model) as db:
        for name, files in speech["enroll"].items():
            db.enroll(name, files)
    return sqlite_url


def listen(*args, stdin=None):
    from click.testing import CliRunner

    from speakerdb.cli import cli

    result = CliRunner().invoke(cli, ["listen", *args], input=stdin)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, lines


def test_cli_listen_verifies_a_file_and_reads_pcm_from_stdin(cli_db, tmp_path):
    groups = by_speaker("librispeech")
    probe = groups["1688"][0]
    result, lines = listen("1688", str(probe), "--db", cli_db, "--json")
    assert result.exit_code == 0, result.output
    assert lines[-1]["type"] == "summary" and lines[-1]["decision"] == ACCEPT
    assert any(line["type"] == "decision" and line["decision"] == ACCEPT for line in lines)

    pcm = (np.clip(read(groups[IMPOSTOR][2]), -1, 1) * 32767).astype("<i2").tobytes()
    result, lines = listen("1688", "--rate", "16000", "--db", cli_db, "--json", stdin=pcm)
    assert result.exit_code == 1, result.output
    assert lines[-1]["decision"] == REJECT

    result, lines = listen(
        "--identify",
        "-",
        "--rate",
        "16000",
        "--format",
        "s16le",
        "--db",
        cli_db,
        "--json",
        stdin=pcm[:-1],  # a last frame of the wrong size: an error event, exit 2
    )
    assert result.exit_code == 2
    assert [line["type"] for line in lines][-2:] == ["error", "summary"]

    result, _ = listen("1688", str(probe), "--db", cli_db)
    assert result.exit_code == 0 and "decision  ACCEPT 1688" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("summary: ACCEPT")


def test_cli_listen_refuses_bad_arguments(cli_db, tmp_path):
    result, _ = listen("1688", "--db", cli_db)  # stdin without --rate
    assert result.exit_code == 2 and "--rate" in result.stderr
    result, _ = listen("--db", cli_db)
    assert result.exit_code == 2 and "NAME" in result.stderr
    result, _ = listen("nobody", str(tmp_path / "missing.wav"), "--db", cli_db)
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


# --- the WebSocket --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory, model):
    """A real ``speakerdb serve`` (at most two live sessions) on a database with three
    speakers and one key per scope."""
    import os
    import uuid

    from tests.service_helpers import Server

    groups = by_speaker("librispeech")
    folder = tmp_path_factory.mktemp(f"live-{request.param}")
    env, drop = os.environ.copy(), None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'live.sqlite'}"
    else:
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
    with SpeakerDB.open(url, model=model) as db:
        for speaker in ENROLLED:
            db.enroll(speaker, groups[speaker][3:6])
        keys = {scope: db.create_key(scope, [scope]).secret for scope in ("verify", "identify")}
    server = Server(url, "--max-sessions", "2", env=env)
    yield server, keys
    server.stop()
    if drop is not None:
        drop()


def connect(server, query, key):
    from websockets.sync.client import connect as ws_connect

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = server.url.replace("http://", "ws://") + f"/v1/sessions?{query}"
    return ws_connect(url, additional_headers=headers, max_size=None)


def pcm(samples):
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def opening(rate=16000, encoding="pcm_s16le"):
    return json.dumps({"sample_rate": rate, "encoding": encoding, "channels": 1})


def stream(ws, data, frame=6400):
    for first in range(0, len(data), frame):
        ws.send(data[first : first + frame])


def received(ws):
    """Every JSON frame until the server closes; (frames, close code)."""
    from websockets.exceptions import ConnectionClosed

    frames = []
    try:
        while True:
            frames.append(json.loads(ws.recv()))
    except ConnectionClosed:
        pass
    return frames, ws.close_code


def test_websocket_sessions_verify_and_identify(served, speech):
    server, keys = served
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send(opening())
        stream(ws, pcm(speech["probe"]["1688"]))
        ws.send(json.dumps({"type": "end"}))
        frames, code = received(ws)
    assert code == 1000
    assert frames[-1]["type"] == "summary" and frames[-1]["decision"] == ACCEPT
    assert any(f["type"] == "decision" and f["decision"] == ACCEPT for f in frames)
    assert len(frames) <= 2 * frames[-1]["speech_seconds"] + 5  # bounded by speech, not frames

    with connect(server, "mode=identify", keys["identify"]) as ws:
        ws.send(opening(encoding="pcm_f32le"))
        stream(ws, speech["probe"]["2033"].astype("<f4").tobytes())
        ws.send(json.dumps({"type": "end"}))
        frames, code = received(ws)
    assert code == 1000 and frames[-1]["decision"] == IDENTIFIED
    assert frames[-1]["segments"][-1]["speaker"] == "2033"


@pytest.mark.parametrize(
    ("query", "key", "status"),
    [
        ("speaker=1688", None, 401),
        ("speaker=1688", "wrong", 401),
        ("mode=identify", "verify", 403),
        ("speaker=1688", "identify", 403),
        ("mode=sideways", "verify", 400),
    ],
)
def test_websocket_refuses_before_the_upgrade(served, query, key, status):
    from websockets.exceptions import InvalidStatus

    server, keys = served
    with pytest.raises(InvalidStatus) as refused:
        connect(server, query, keys.get(key, key))
    assert refused.value.response.status_code == status
    assert json.loads(refused.value.response.body)["error"]["code"]


def test_websocket_bad_data_gets_an_error_event_and_close_1003(served, speech):
    server, keys = served
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send("not json")
        frames, code = received(ws)
    assert code == 1003 and frames[0]["type"] == "error" and frames[0]["fatal"]
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send(opening(rate=4000))
        frames, code = received(ws)
    assert code == 1003 and "4000 Hz" in frames[0]["message"]
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send(opening())
        ws.send(pcm(speech["probe"]["1688"][:16000]))
        ws.send(b"\x00\x01\x02")  # not a whole number of 2-byte samples
        frames, code = received(ws)
    assert code == 1003
    assert [f["type"] for f in frames][-2:] == ["error", "summary"]
    with connect(server, "speaker=nobody", keys["verify"]) as ws:
        ws.send(opening())
        frames, code = received(ws)
    assert code == 1008 and frames[0]["error"] == "speaker_not_found"


def test_websocket_concurrent_sessions_and_the_cap(served, speech):
    from websockets.exceptions import InvalidStatus

    server, keys = served
    with (
        connect(server, "speaker=1688", keys["verify"]) as first,
        connect(server, "mode=identify", keys["identify"]) as second,
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(server, "mode=identify", keys["identify"])
        assert refused.value.response.status_code == 429
        one, two = _interleaved(first, second, speech)
    assert one[-1]["decision"] == ACCEPT and two[-1]["decision"] == UNKNOWN


def _interleaved(first, second, speech):
    genuine, impostor = pcm(speech["probe"]["1688"]), pcm(speech["impostor"])
    first.send(opening())
    second.send(opening())
    for start in range(0, max(len(genuine), len(impostor)), 6400):
        if start < len(genuine):
            first.send(genuine[start : start + 6400])
        if start < len(impostor):
            second.send(impostor[start : start + 6400])
    first.send(json.dumps({"type": "end"}))
    second.send(json.dumps({"type": "end"}))
    (one, code_one), (two, code_two) = received(first), received(second)
    assert code_one == code_two == 1000
    return one, two


def test_a_client_hanging_up_mid_stream_leaves_the_server_serving(served, speech):
    server, keys = served
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send(opening())
        stream(ws, pcm(speech["probe"]["1688"][: 16000 * 3]))
    # closed on leaving the block: no end frame, nothing read
    with connect(server, "speaker=1688", keys["verify"]) as ws:
        ws.send(opening())
        stream(ws, pcm(speech["probe"]["1688"]))
        ws.send(json.dumps({"type": "end"}))
        frames, code = received(ws)
    assert code == 1000 and frames[-1]["decision"] == ACCEPT
