"""Live sessions against the offline answer on the same audio: how soon, how often the same.

For read speech (librispeech, 16 kHz) and phone speech (telephone, 8 kHz mu-law), each
speaker is enrolled from its first ``--enroll`` recordings into a temporary SQLite
database; every other recording of the speaker is a held-out genuine call, streamed in
100 ms int16 chunks at its own rate through ``SpeakerDB.session(speaker=...)``, and the
same recording against the next enrolled speaker is an impostor call. The session's
constants are set a priori (see speakerdb/live/_session.py), except the speaker-change
ones, chosen leave one set out by benchmarks/live_change_choice.py (the same values on
either set), so every figure is held out.

Reported per set:
- time to decision: speech seconds heard (the session's own count) when the first decision
  event came, genuine calls that were accepted live; median and p90;
- agreement: the session's final decision against ``SpeakerDB.verify`` on the same array;
- impostor early accepts: impostor calls ever ACCEPTed live, and among them those the
  offline rule rejects;
- hand-overs: a genuine recording followed by another enrolled speaker's (identify
  session); share of hand-overs reported within 3 s of audio after the join, median delay,
  false changes (reported before the join);
- cost: CPU seconds per second of audio, and the per-chunk processing time (p50 / p99, one
  session at a time: the lag a chunk adds on an idle machine).

    python benchmarks/live_sessions.py [--enroll 3] [--sets librispeech,telephone]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from speakerdb.live import DecisionEvent, ProgressEvent, SpeakerChange

if TYPE_CHECKING:
    from speakerdb import Embedder
    from speakerdb.live import Event, LiveSession, Summary

from _common import DATA, emit, percentiles_ms

CHUNK_SECONDS = 0.1
HANDOVER_WITHIN_S = 3.0


def _groups(name: str) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for line in (DATA / name / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            groups.setdefault(str(item["label"]), []).append(DATA / name / item["audio_filepath"])
    return groups


def _int16(path: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(path, dtype="int16", always_2d=True)
    return np.ascontiguousarray(samples[:, 0]), int(rate)


def _run(
    session: LiveSession, samples: np.ndarray, rate: int, lags: list[float]
) -> tuple[list[Event], Summary]:
    step = int(CHUNK_SECONDS * rate)
    events: list[Event] = []
    for first in range(0, samples.size, step):
        started = time.perf_counter()
        events += session.feed(samples[first : first + step], sample_rate=rate)
        lags.append(time.perf_counter() - started)
    return events, session.close()


def _first_decision_speech(events: list[Event]) -> float | None:
    heard = 0.0
    for event in events:
        if isinstance(event, ProgressEvent):
            heard = event.speech_seconds
        if isinstance(event, DecisionEvent):
            return heard
    return None


def measure(
    name: str, model: Embedder, enroll: int, handovers_only: bool = False
) -> dict[str, Any]:
    from speakerdb import SpeakerDB

    groups = _groups(name)
    speakers = sorted(groups)
    lags: list[float] = []
    cpu = 0.0
    audio = 0.0
    to_decision: list[float] = []
    agree = total = 0
    early_accepts = early_accepts_offline_reject = impostors = 0
    delays: list[float] = []
    missed = false_changes = handovers = call_changes = 0
    with tempfile.TemporaryDirectory() as folder:
        db = SpeakerDB.open(f"sqlite:///{folder}/live.sqlite", model=model)
        for speaker in speakers:
            db.enroll(speaker, groups[speaker][:enroll])
        for k, speaker in enumerate(speakers):
            other = speakers[(k + 1) % len(speakers)]
            for path in [] if handovers_only else groups[speaker][enroll:]:
                samples, rate = _int16(path)
                as_float = samples.astype(np.float32) / 32768.0
                for claim, genuine in ((speaker, True), (other, False)):
                    started = time.process_time()
                    with db.session(speaker=claim) as session:
                        events, summary = _run(session, samples, rate, lags)
                    cpu += time.process_time() - started
                    audio += samples.size / rate
                    offline = db.verify(claim, as_float, sample_rate=rate)
                    total += 1
                    agree += summary.accepted == offline.accepted
                    call_changes += sum(isinstance(e, SpeakerChange) for e in events)
                    accepted_live = any(d.decision == "ACCEPT" for d in summary.decisions)
                    if genuine:
                        first = _first_decision_speech(events)
                        live_first = next((e for e in events if isinstance(e, DecisionEvent)), None)
                        if first is not None and live_first is not None and live_first.accepted:
                            to_decision.append(first)
                    else:
                        impostors += 1
                        early_accepts += accepted_live
                        early_accepts_offline_reject += accepted_live and not offline.accepted
            # A hand-over: this speaker's first held-out call, then the next speaker's.
            a, rate_a = _int16(groups[speaker][enroll])
            b, _ = _int16(groups[other][enroll])
            joined = np.concatenate([a, b])
            join = a.size / rate_a
            started = time.process_time()
            with db.session() as session:
                events, summary = _run(session, joined, rate_a, lags)
            cpu += time.process_time() - started
            audio += joined.size / rate_a
            handovers += 1
            changes = [e for e in events if isinstance(e, SpeakerChange)]
            false_changes += sum(c.time < join for c in changes)
            after = [c.time - join for c in changes if c.time >= join]
            if after and after[0] <= HANDOVER_WITHIN_S:
                delays.append(after[0])
            else:
                missed += 1
                if after:
                    delays.append(after[0])
        db.close()
    genuine_calls = total - impostors
    return {
        "set": name,
        "speakers": len(speakers),
        "genuine_calls": genuine_calls,
        "impostor_calls": impostors,
        "genuine_accepted_live": len(to_decision),
        "time_to_decision_median_s": round(statistics.median(to_decision), 3)
        if to_decision
        else None,
        "time_to_decision_p90_s": round(float(np.percentile(to_decision, 90)), 3)
        if to_decision
        else None,
        "agreement": round(agree / total, 4) if total else None,
        "impostor_early_accepts": early_accepts,
        "impostor_early_accepts_offline_rejects": early_accepts_offline_reject,
        "handovers": handovers,
        "handover_within_3s": round((handovers - missed) / handovers, 4),
        "handover_delay_median_s": round(statistics.median(delays), 3) if delays else None,
        "false_changes": false_changes,
        "changes_in_one_voice_calls": call_changes,
        "cpu_s_per_audio_s": round(cpu / audio, 4),
        "audio_s": round(audio, 1),
        "chunk_processing": percentiles_ms(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enroll", type=int, default=3)
    parser.add_argument("--sets", default="librispeech,telephone")
    parser.add_argument(
        "--handovers-only", action="store_true", help="Only the hand-over sessions (quick)."
    )
    args = parser.parse_args()
    from speakerdb import load_model

    model = load_model(device="cpu")
    started = time.time()
    results = [
        measure(name, model, args.enroll, args.handovers_only) for name in args.sets.split(",")
    ]
    lines = ["live sessions against offline verify on the same audio (held out):"]
    for r in results:
        lines.append(
            f"  {r['set']}: {r['genuine_calls']} genuine / {r['impostor_calls']} impostor calls; "
            f"decision after {r['time_to_decision_median_s']} s of speech (median, p90 "
            f"{r['time_to_decision_p90_s']}); agreement {r['agreement']}; "
            f"impostor early accepts {r['impostor_early_accepts']} "
            f"({r['impostor_early_accepts_offline_rejects']} that offline rejects); "
            f"hand-overs within 3 s {100 * r['handover_within_3s']:.0f} % (median "
            f"{r['handover_delay_median_s']} s, {r['false_changes']} false changes; "
            f"{r['changes_in_one_voice_calls']} changes in one-voice calls); "
            f"CPU {r['cpu_s_per_audio_s']} s per audio s; chunk p50/p99 "
            f"{r['chunk_processing']['p50_ms']:.1f}/{r['chunk_processing']['p99_ms']:.1f} ms"
        )
    emit(
        lines,
        {
            "benchmark": "live_sessions",
            "enroll": args.enroll,
            "results": results,
            "wall_s": round(time.time() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
