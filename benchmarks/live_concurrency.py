"""Lag of live sessions over the WebSocket with many callers at once, against one caller.

A real ``speakerdb serve`` (one worker, SQLite, three read-speech speakers enrolled) takes
``--sessions`` WebSocket verify sessions at the same time; each client streams a held-out
recording of an enrolled speaker as a phone line would, paced in real time (100 ms int16
frames at the recording's rate, each sent when its audio would have been spoken), and reads
the server's events. The lag of an event is the wall-clock time it arrived minus the
moment the audio it speaks of (its ``time``) had been sent in full: what a call centre waits
beyond the caller's own speech. The baseline in the same run is one session alone on the
same server; the figure is the ratio of the p50 / p99 lags (the machine is shared: ratios).

By default every caller starts in the same 100 ms and, as calls repeat three recordings,
callers of one recording reach each decision and re-scoring at the same moment: a burst
no call centre sends, the worst case. ``--stagger S`` starts caller i of N at i * S / N
seconds instead (calls arriving one after another, as in a call centre), and the lags are
also reported over the steady state alone: the events that arrive while every caller is
streaming (from the last caller's start to the first caller's last frame), so the ramp up
and down, with fewer callers, does not flatter the figure. ``--distinct`` gives every
caller a call of its own (the five read-speech speakers enrolled, caller i streaming
speaker i mod 5's held-out recordings from the (i // 5)-th on), so callers who start
together still speak, pause and reach decisions at their own moments, as different
callers do.

    python benchmarks/live_concurrency.py [--sessions 32] [--seconds 20] [--stagger 0] [--distinct]

The issue's goal (live verification, issue 20): with 32 concurrent real-time sessions on
this 2-core CPU, lag (audio end of a chunk to its event) p50 <= 150 ms and p99 <= 1 s. Not an
assertion anywhere: a measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import DATA, emit
from service_helpers import Server

FRAME_SECONDS = 0.1
ENROLLED = ("1688", "1998", "2033")


def _groups() -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for line in (DATA / "librispeech" / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            groups.setdefault(str(item["label"]), []).append(
                DATA / "librispeech" / item["audio_filepath"]
            )
    return groups


def _call(
    groups: dict[str, list[Path]], speaker: str, seconds: float, rotation: int = 0
) -> tuple[bytes, int]:
    """The speaker's held-out recordings, from the ``rotation``-th on (cyclically), joined
    to ``seconds`` of int16 audio."""
    parts, rate = [], 16000
    held_out = groups[speaker][6:] + groups[speaker][:3]
    rotation %= len(held_out)
    for path in held_out[rotation:] + held_out[:rotation]:
        samples, rate = sf.read(path, dtype="float32")
        parts.append(samples)
        if sum(p.size for p in parts) >= seconds * rate:
            break
    audio = np.concatenate(parts)[: int(seconds * rate)]
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(), rate


def _session(
    url: str,
    key: str,
    speaker: str,
    data: bytes,
    rate: int,
    ready: threading.Barrier,
    offset: float = 0.0,
) -> dict[str, Any]:
    """One real-time client, starting its audio ``offset`` seconds after every caller has
    connected; returns its lags (s) by event type, each with the wall time it arrived, its
    streaming interval (wall times of its first and last frame) and its final decision."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frame = int(rate * FRAME_SECONDS) * 2
    lags: dict[str, list[tuple[float, float]]] = {"progress": [], "decision": []}
    final: dict[str, Any] = {}
    sent_at: list[tuple[float, float]] = []  # (audio seconds sent in full, wall time)
    ws_url = url.replace("http://", "ws://") + f"/v1/sessions?speaker={speaker}"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json.dumps({"sample_rate": rate, "encoding": "pcm_s16le", "channels": 1}))

        def reader() -> None:
            try:
                while True:
                    event = json.loads(ws.recv())
                    now = time.monotonic()
                    kind = event.get("type")
                    if kind in lags:
                        # When had the audio up to this event's time been sent in full?
                        due = next((w for s, w in sent_at if s >= event["time"] - 1e-6), now)
                        lags[kind].append((max(0.0, now - due), now))
                    elif kind == "summary":
                        final.update(event)
            except ConnectionClosed:
                pass

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        ready.wait()  # every caller connected: the audio starts together, or staggered
        began = time.monotonic() + offset
        for index, first in enumerate(range(0, len(data), frame)):
            chunk = data[first : first + frame]
            due = began + index * FRAME_SECONDS
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing a real-time caller: this is what is measured
            ws.send(chunk)
            sent_at.append(((first + len(chunk)) / 2 / rate, time.monotonic()))
        streamed = (began, time.monotonic())
        ws.send(json.dumps({"type": "end"}))
        thread.join(timeout=600)
    return {"lags": lags, "decision": final.get("decision"), "streamed": streamed}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the server has used so far (Linux /proc): the process and
    its living children (``serve --workers N`` runs the sessions in child processes)."""
    total = 0.0
    for one in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in listed]
    for child in list(found):
        found += _children(child)
    return found


def _round(
    url: str,
    key: str,
    calls: list[tuple[str, bytes, int]],
    sessions: int,
    pid: int,
    stagger: float = 0.0,
) -> dict[str, Any]:
    seconds = len(calls[0][1]) / 2 / calls[0][2]
    ready = threading.Barrier(sessions + 1, timeout=300)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        speaker, data, rate = calls[i % len(calls)]
        out = _session(url, key, speaker, data, rate, ready, i * stagger / sessions)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    ready.wait()
    cpu0, server0 = os.times(), _cpu_seconds(pid)
    for t in threads:
        t.join()
    cpu1, server1 = os.times(), _cpu_seconds(pid)
    decision = [lag for r in results for lag in r["lags"]["decision"]]
    progress = [lag for r in results for lag in r["lags"]["progress"]]
    every = decision + progress
    # the steady state: every caller streaming
    all_on = max(r["streamed"][0] for r in results)
    all_off = min(r["streamed"][1] for r in results)
    steady = [(lag, at) for lag, at in every if all_on <= at <= all_off]

    def pct(values: list[tuple[float, float]], q: float) -> float | None:
        """The q-th percentile of the lags of (lag, arrival) pairs."""
        lags = [lag for lag, _ in values]
        return round(float(np.percentile(lags, q)), 3) if lags else None

    return {
        "sessions": sessions,
        "stagger_s": stagger,
        "events": len(every),
        "lag_p50_s": pct(every, 50),
        "lag_p99_s": pct(every, 99),
        "decision_lag_p50_s": pct(decision, 50),
        "decision_lag_p99_s": pct(decision, 99),
        "steady_seconds": round(max(0.0, all_off - all_on), 2),
        "steady_events": len(steady),
        "steady_lag_p50_s": pct(steady, 50),
        "steady_lag_p99_s": pct(steady, 99),
        "accepted": sum(1 for r in results if r["decision"] == "ACCEPT"),
        "client_cpu_s": round(cpu1.user - cpu0.user + cpu1.system - cpu0.system, 2),
        "server_cpu_s": round(server1 - server0, 2),
        # the server's CPU per second of audio it took, over all sessions
        "server_cpu_per_audio_s": round((server1 - server0) / (sessions * seconds), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers (sessions are per worker)"
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="start caller i of N at i * STAGGER / N seconds (0: all at once)",
    )
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="every caller a different call (all five speakers enrolled, each caller "
        "starting at another held-out recording) instead of three calls repeated",
    )
    args = parser.parse_args()
    from speakerdb import SpeakerDB

    groups = _groups()
    enrolled = sorted(groups) if args.distinct else list(ENROLLED)
    if args.distinct:
        calls = [
            (s, *_call(groups, s, args.seconds, i // len(enrolled)))
            for i, s in zip(range(args.sessions), itertools.cycle(enrolled), strict=False)
        ]
    else:
        calls = [(s, *_call(groups, s, args.seconds)) for s in ENROLLED]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/live.sqlite"
        with SpeakerDB.open(url) as db:
            for speaker in enrolled:
                db.enroll(speaker, groups[speaker][3:6])
            key = db.create_key("bench", ["verify"]).secret
        env = {**os.environ, "SPEAKERDB_INDEX_DIR": f"{tmp}/ix"}
        cap = str(max(args.sessions, 1))
        workers = ("--workers", str(args.workers)) if args.workers > 1 else ()
        with Server(url, "--max-sessions", cap, *workers, env=env) as server:
            pid = server.process.pid
            alone = _round(server.url, key, calls, 1, pid)
            crowd = _round(server.url, key, calls, args.sessions, pid, args.stagger)

    def ratio(key: str) -> float | None:
        a, b = alone.get(key), crowd.get(key)
        return round(b / a, 2) if a and b else None

    record = {
        "benchmark": "live_concurrency",
        "seconds_per_call": args.seconds,
        "stagger_s": args.stagger,
        "workers": args.workers,
        "distinct_calls": len({data for _, data, _ in calls}),
        "alone": alone,
        "crowd": crowd,
        "p50_ratio": ratio("lag_p50_s"),
        "p99_ratio": ratio("lag_p99_s"),
        "load": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    lines = [
        f"live sessions over the WebSocket, {args.seconds:g} s real-time calls, "
        f"{args.workers} worker(s), callers starting over {args.stagger:g} s, "
        f"{record['distinct_calls']} distinct calls",
        f"1 session:  event lag p50 {alone['lag_p50_s']} s, p99 {alone['lag_p99_s']} s; "
        f"decisions p50 {alone['decision_lag_p50_s']} s, p99 {alone['decision_lag_p99_s']} s",
        f"{args.sessions} sessions: event lag p50 {crowd['lag_p50_s']} s, p99 "
        f"{crowd['lag_p99_s']} s; decisions p50 {crowd['decision_lag_p50_s']} s, p99 "
        f"{crowd['decision_lag_p99_s']} s; accepted {crowd['accepted']}/{args.sessions}",
        f"  while all {args.sessions} stream ({crowd['steady_seconds']} s, "
        f"{crowd['steady_events']} events): event lag p50 {crowd['steady_lag_p50_s']} s, "
        f"p99 {crowd['steady_lag_p99_s']} s",
        f"server CPU per second of audio: {alone['server_cpu_per_audio_s']} s alone, "
        f"{crowd['server_cpu_per_audio_s']} s with {args.sessions} sessions",
        f"ratio {args.sessions} vs 1: p50 {record['p50_ratio']}x, p99 {record['p99_ratio']}x "
        f"(load {statistics.fmean(os.getloadavg()):.1f})",
    ]
    emit(lines, record)


if __name__ == "__main__":
    main()
