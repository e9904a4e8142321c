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
- hand-overs (identify sessions; the calls of benchmarks/_handover.py): one speaker's
  held-out recordings joined to >= 6 s of audio, then another's to >= 4 s after the join,
  ``--partners`` hand-overs per speaker; hand-overs reported within 3 s of audio after the
  join, median delay (first change after the join), hand-overs with a change before the
  join, and one-voice calls (the same construction, one speaker) with a change. Beside
  them the earlier construction (each speaker's first held-out recording, then the next
  speaker's), with how many of its misses the audio forbids (a first voice of under 3 s
  of speech, a second of under 3 s of audio);
- cost: CPU seconds per second of audio, and the per-chunk processing time (p50 / p99, one
  session at a time: the lag a chunk adds on an idle machine).

    python benchmarks/live_sessions.py [--enroll 3] [--sets librispeech,telephone]
        [--partners 8] [--handovers-only | --no-handovers]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from speakerdb.live import DecisionEvent, ProgressEvent, SpeakerChange

if TYPE_CHECKING:
    from speakerdb import Embedder, SpeakerDB
    from speakerdb.live import Event, LiveSession, Summary

from _handover import (
    HANDOVER_WITHIN_S,
    JoinedCall,
    old_handovers,
    read_int16,
    short_audio,
)
from _handover import calls as handover_calls
from _handover import groups as handover_groups

from _common import emit, percentiles_ms

CHUNK_SECONDS = 0.1


@dataclass
class Tally:
    """Hand-over and one-voice calls' speaker changes, as counted for the report."""

    handovers: int = 0
    caught: int = 0  # first change after the join within HANDOVER_WITHIN_S of it
    delays: list[float] = field(default_factory=list)  # first change after the join, any
    before_join: int = 0  # hand-over calls with a change before the join
    missed_short: dict[str, int] = field(default_factory=dict)  # misses the audio forbids
    one_voice: int = 0
    one_voice_with_change: int = 0
    one_voice_changes: int = 0
    one_voice_audio_s: float = 0.0

    def add(self, call: JoinedCall, changes: list[float], speech_at_join: float) -> None:
        """One call's change times (seconds of audio) and the speech heard at its join."""
        if not call.handover:
            self.one_voice += 1
            self.one_voice_with_change += bool(changes)
            self.one_voice_changes += len(changes)
            self.one_voice_audio_s += call.samples.size / call.rate
            return
        self.handovers += 1
        self.before_join += any(t < call.join for t in changes)
        after = [t - call.join for t in changes if t >= call.join]
        if after:
            self.delays.append(after[0])
        if after and after[0] <= HANDOVER_WITHIN_S:
            self.caught += 1
            return
        why = short_audio(call, speech_at_join)
        if why is not None:
            self.missed_short[why] = self.missed_short.get(why, 0) + 1

    def report(self) -> dict[str, Any]:
        return {
            "handovers": self.handovers,
            "within_3s": self.caught,
            "within_3s_share": round(self.caught / self.handovers, 4) if self.handovers else None,
            "delay_median_s": round(statistics.median(self.delays), 3) if self.delays else None,
            "handovers_with_a_change_before_join": self.before_join,
            "misses_short_audio": self.missed_short,
            "one_voice_calls": self.one_voice,
            "one_voice_calls_with_a_change": self.one_voice_with_change,
            "one_voice_changes_per_call": round(self.one_voice_changes / self.one_voice, 4)
            if self.one_voice
            else None,
            "one_voice_audio_s": round(self.one_voice_audio_s, 1),
        }


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


def _changes(db: SpeakerDB, call: JoinedCall, lags: list[float]) -> tuple[list[float], float]:
    """An identify session over a joined call: its speaker-change times (seconds of audio)
    and the speech seconds it had heard when the join was reached."""
    step = int(CHUNK_SECONDS * call.rate)
    at_join = 0.0
    changes = []
    with db.session() as session:
        for first in range(0, call.samples.size, step):
            started = time.perf_counter()
            events = session.feed(call.samples[first : first + step], sample_rate=call.rate)
            lags.append(time.perf_counter() - started)
            changes += [e.time for e in events if isinstance(e, SpeakerChange)]
            if first + step <= round(call.join * call.rate):
                at_join = session.speech_seconds
    return changes, at_join


def _first_decision_speech(events: list[Event]) -> float | None:
    heard = 0.0
    for event in events:
        if isinstance(event, ProgressEvent):
            heard = event.speech_seconds
        if isinstance(event, DecisionEvent):
            return heard
    return None


def measure(
    name: str, model: Embedder, enroll: int, partners: int, handovers_only: bool = False
) -> dict[str, Any]:
    from speakerdb import SpeakerDB

    groups = handover_groups(name)
    speakers = sorted(groups)
    lags: list[float] = []
    cpu = 0.0
    audio = 0.0
    to_decision: list[float] = []
    agree = total = 0
    early_accepts = early_accepts_offline_reject = impostors = 0
    call_changes = 0
    calls = handover_calls(name, enroll, partners) if partners else []
    old_calls = old_handovers(name, enroll) if partners else []
    tallies = {"new": Tally(), "old": Tally()}
    with tempfile.TemporaryDirectory() as folder:
        db = SpeakerDB.open(f"sqlite:///{folder}/live.sqlite", model=model)
        for speaker in speakers:
            db.enroll(speaker, groups[speaker][:enroll])
        for k, speaker in enumerate(speakers):
            other = speakers[(k + 1) % len(speakers)]
            for path in [] if handovers_only else groups[speaker][enroll:]:
                samples, rate = read_int16(path)
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
        for key, construction in (("new", calls), ("old", old_calls)):
            for call in construction:
                started = time.process_time()
                changes, at_join = _changes(db, call, lags)
                cpu += time.process_time() - started
                audio += call.samples.size / call.rate
                tallies[key].add(call, changes, at_join)
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
        "handover_calls": tallies["new"].report(),
        "old_handover_calls": tallies["old"].report(),
        "changes_in_one_voice_calls": call_changes,
        "cpu_s_per_audio_s": round(cpu / audio, 4),
        "audio_s": round(audio, 1),
        "chunk_processing": percentiles_ms(lags),
    }


def _handover_line(title: str, t: dict[str, Any]) -> str:
    return (
        f"{title}: {t['within_3s']} of {t['handovers']} within 3 s (median delay "
        f"{t['delay_median_s']} s), {t['handovers_with_a_change_before_join']} with a change "
        f"before the join, misses the audio forbids {t['misses_short_audio']}, "
        f"{t['one_voice_calls_with_a_change']} of {t['one_voice_calls']} one-voice calls with "
        f"a change ({t['one_voice_changes_per_call']} per call)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enroll", type=int, default=3)
    parser.add_argument("--sets", default="librispeech,telephone")
    parser.add_argument(
        "--handovers-only", action="store_true", help="Only the hand-over sessions (quick)."
    )
    parser.add_argument(
        "--no-handovers",
        action="store_true",
        help="Only the genuine and impostor sessions (no hand-over or one-voice calls).",
    )
    parser.add_argument(
        "--partners", type=int, default=8, help="Hand-overs per speaker (to the next N)."
    )
    args = parser.parse_args()
    from speakerdb import load_model

    model = load_model(device="cpu")
    started = time.time()
    results = [
        measure(
            name,
            model,
            args.enroll,
            0 if args.no_handovers else args.partners,
            args.handovers_only,
        )
        for name in args.sets.split(",")
    ]
    lines = ["live sessions against offline verify on the same audio (held out):"]
    for r in results:
        lines.append(
            f"  {r['set']}: {r['genuine_calls']} genuine / {r['impostor_calls']} impostor calls; "
            f"decision after {r['time_to_decision_median_s']} s of speech (median, p90 "
            f"{r['time_to_decision_p90_s']}); agreement {r['agreement']}; "
            f"impostor early accepts {r['impostor_early_accepts']} "
            f"({r['impostor_early_accepts_offline_rejects']} that offline rejects); "
            f"{r['changes_in_one_voice_calls']} changes in single-recording calls; "
            f"{_handover_line('hand-overs', r['handover_calls'])}; "
            f"{_handover_line('old construction', r['old_handover_calls'])}; "
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
