"""How speakerdb.live's speaker-change constants were chosen: leave one set out.

Each recording of a set is streamed through an identify session (100 ms int16 chunks, its
own rate) with change detection switched off, and the embedding of every change-check
window is kept (GE2E: the mean of the last CHANGE_WINDOW_COUNT window embeddings, at each
new window; other models: the last CHANGE_WINDOW_SECONDS of speech re-embedded, every
CHANGE_EVERY_SECONDS).
Calls: hand-overs (a speaker's held-out recording joined to the next speaker's, two per
speaker) and one-voice calls (every held-out recording). The change rule of
speakerdb/live/_session.py (`_drop`: the window's cosine below the segment's own
same-voice level) is then replayed on these windows for each candidate (drop, minimum
windows, confirmations), up to the first change of a call.

A candidate's value on a set: hand-overs caught within 3 s of the join, minus twice the
share of hand-overs with a change before the join and twice the share of one-voice calls
with any change. The candidate chosen on one set is reported on the other (held out).

    python benchmarks/live_change_choice.py [--enroll 3]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import speakerdb.live._session as live_session
from speakerdb.live._session import change_drop

if TYPE_CHECKING:
    from speakerdb import Embedder, SpeakerDB

from live_sessions import CHUNK_SECONDS, HANDOVER_WITHIN_S, _groups, _int16

from _common import emit

SETS = ("librispeech", "telephone")
DROPS = (0.05, 0.07, 0.09, 0.11, 0.13)
MIN_WINDOWS = (2, 4)
CONFIRMATIONS = (1, 2)
WINDOW_COUNTS = (5, 6)  # window embeddings averaged per check (3.1 s, 3.5 s of speech)


@dataclass
class Call:
    join: float | None  # seconds of audio at the join (hand-over), None: one voice
    # (time, vector): each window embedding as it came (GE2E), else each re-embedded window
    windows: list[tuple[float, np.ndarray]] = field(default_factory=list)


def _record(db: SpeakerDB, samples: np.ndarray, rate: int, join: float | None) -> Call:
    call = Call(join)
    with db.session() as session:
        original = session._compare

        def compare(now: float, start: float, vector: np.ndarray, judged: Any) -> list[Any]:
            call.windows.append((now, vector))
            return original(now, start, vector, judged)

        session._compare = compare  # type: ignore[method-assign]
        step = int(CHUNK_SECONDS * rate)
        for first in range(0, samples.size, step):
            session.feed(samples[first : first + step], sample_rate=rate)
    return call


def record(name: str, model: Embedder, enroll: int) -> list[Call]:
    from speakerdb import SpeakerDB

    live_session.CHANGE_DROP = float("inf")  # never fires: every window is kept
    live_session.CHANGE_DROP_REEMBEDDED = float("inf")
    live_session.CHANGE_WINDOW_COUNT = 1  # every window on its own: replay averages them
    groups = _groups(name)
    speakers = sorted(groups)
    calls: list[Call] = []
    with tempfile.TemporaryDirectory() as folder:
        db = SpeakerDB.open(f"sqlite:///{folder}/choice.sqlite", model=model)
        for speaker in speakers:
            db.enroll(speaker, groups[speaker][:enroll])
        for k, speaker in enumerate(speakers):
            for shift in (1, 2):
                other = speakers[(k + shift) % len(speakers)]
                index = enroll + shift - 1
                if index >= min(len(groups[speaker]), len(groups[other])):
                    continue
                a, rate = _int16(groups[speaker][index])
                b, _ = _int16(groups[other][index])
                calls.append(_record(db, np.concatenate([a, b]), rate, a.size / rate))
            for path in groups[speaker][enroll:]:
                samples, rate = _int16(path)
                calls.append(_record(db, samples, rate, None))
        db.close()
    return calls


def _checks(call: Call, count: int) -> list[tuple[float, np.ndarray]]:
    """The change checks of a call: at each window, the mean direction of the last
    ``count`` (GE2E window embeddings; the re-embedding path's windows are used as they are
    when ``count`` is 1)."""
    out = []
    for i in range(count - 1, len(call.windows)):
        mean = np.mean([v for _, v in call.windows[i - count + 1 : i + 1]], axis=0)
        out.append((call.windows[i][0], mean / np.linalg.norm(mean)))
    return out


def first_change(
    call: Call, drop: float, min_windows: int, confirmations: int, count: int
) -> float | None:
    import collections

    live_session.CHANGE_MIN_WINDOWS = min_windows
    same: collections.deque[np.ndarray] = collections.deque(
        maxlen=live_session.CHANGE_HISTORY_WINDOWS
    )
    misses = 0
    for time, vector in _checks(call, count):
        fall = change_drop(vector, same)
        if fall is None or fall < drop:
            same.append(vector)
            misses = 0
            continue
        misses += 1
        if misses >= confirmations:
            return time
    return None


def replay(calls: list[Call], candidate: tuple[float, int, int, int]) -> dict[str, Any]:
    caught = handovers = early = ones = false = 0
    delays: list[float] = []
    for call in calls:
        time = first_change(call, *candidate)
        if call.join is None:
            ones += 1
            false += time is not None
            continue
        handovers += 1
        if time is not None and time < call.join:
            early += 1
        elif time is not None and time - call.join <= HANDOVER_WITHIN_S:
            caught += 1
            delays.append(time - call.join)
    value = caught / handovers - 2 * early / handovers - 2 * false / ones
    return {
        "handovers": handovers,
        "within_3s": caught,
        "changes_before_join": early,
        "one_voice_calls": ones,
        "one_voice_calls_with_a_change": false,
        "median_delay_s": round(float(np.median(delays)), 3) if delays else None,
        "value": round(value, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enroll", type=int, default=3)
    args = parser.parse_args()
    from speakerdb import load_model

    model = load_model(device="cpu")
    calls = {name: record(name, model, args.enroll) for name in SETS}
    candidates = list(itertools.product(DROPS, MIN_WINDOWS, CONFIRMATIONS, WINDOW_COUNTS))
    results = {name: {c: replay(calls[name], c) for c in candidates} for name in SETS}
    lines = ["speaker-change constants, chosen on one set, reported on the other:"]
    choices = []
    for chosen_on, held_out in (SETS, SETS[::-1]):
        best = max(candidates, key=lambda c: results[chosen_on][c]["value"])
        held = results[held_out][best]
        choices.append({"chosen_on": chosen_on, "candidate": best, "held_out": held_out, **held})
        lines.append(
            f"  chosen on {chosen_on}: drop {best[0]}, min windows {best[1]}, confirmations "
            f"{best[2]}, windows per check {best[3]} -> {held_out}: {held['within_3s']} of "
            f"{held['handovers']} hand-overs "
            f"within 3 s, {held['changes_before_join']} before the join, "
            f"{held['one_voice_calls_with_a_change']} of {held['one_voice_calls']} one-voice "
            "calls with a change"
        )
    table = [
        {"candidate": c, **{name: results[name][c]["value"] for name in SETS}} for c in candidates
    ]
    summary = {"benchmark": "live_change_choice", "enroll": args.enroll, "choices": choices}
    emit(lines, {**summary, "values": table})


if __name__ == "__main__":
    main()
