"""How speakerdb.live's speaker-change constants were chosen: leave one set out.

Each recording of a set is streamed through an identify session (100 ms int16 chunks, its
own rate) with change detection switched off, and the embedding of every change-check
window is kept (GE2E: the mean of the last CHANGE_WINDOW_COUNT window embeddings, at each
new window; other models: the last CHANGE_WINDOW_SECONDS of speech re-embedded, every
CHANGE_EVERY_SECONDS).
Calls (benchmarks/_handover.py, the same as live_sessions.py's): hand-overs (a speaker's
held-out recordings joined to >= 6 s of audio, then another speaker's to >= 4 s after the
join; ``--partners`` per speaker) and one-voice calls (the same construction without the
switch, as long). Before these, the calls were one held-out recording joined to the next
speaker's (two per speaker) and single recordings, which made hand-overs away from a voice
heard for under 3 s and one-voice calls shorter than the hand-overs. The change rule of
speakerdb/live/_change.py (`change_drop`: the window's cosine below the segment's own
same-voice level) is then replayed on these windows for each candidate (drop, minimum
windows, confirmations), up to the first change of a call.

A candidate's value on a set: hand-overs caught within 3 s of the join, minus twice the
share of hand-overs with a change before the join and twice the share of one-voice calls
with any change. The candidate chosen on one set is reported on the other (held out). Ties
go to the first candidate in the grid's order (the smaller drop, then fewer minimum
windows, confirmations, windows a check). The library's constants are replayed beside
them, on both sets, as the baseline.

    python benchmarks/live_change_choice.py [--enroll 3] [--partners 8] [--step 1]

``--step 2`` replays every other window (windows 0.76 s apart, the engine's own step,
starting at the first or, with ``--phase 1``, the second): what the checks would catch
with half the window encodings, the largest part of a session's CPU.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import speakerdb.live._change as live_change
import speakerdb.live._session as live_session
from speakerdb.live._change import change_drop

if TYPE_CHECKING:
    from speakerdb import Embedder, SpeakerDB

from _handover import HANDOVER_WITHIN_S, groups
from _handover import calls as handover_calls
from live_sessions import CHUNK_SECONDS

from _common import emit

SETS = ("librispeech", "telephone")
DROPS = (0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.11, 0.13)
MIN_WINDOWS = (2, 4)
CONFIRMATIONS = (1, 2)
# window embeddings averaged per check (1.6 s apiece, 0.38 s apart: 2.4, 2.7, 3.1, 3.5 s of
# speech); fewer could catch a change sooner, on noisier checks
WINDOW_COUNTS = (3, 4, 5, 6)


@dataclass
class Call:
    join: float | None  # seconds of audio at the join (hand-over), None: one voice
    # (time, vector): each window embedding as it came (GE2E), else each re-embedded window
    windows: list[tuple[float, np.ndarray]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # each window's start (session time)
    speakers: tuple[str, str] = ("", "")  # first and second voice (equal: one voice)


def _record(
    db: SpeakerDB, samples: np.ndarray, rate: int, join: float | None, speakers: tuple[str, str]
) -> Call:
    call = Call(join, speakers=speakers)
    with db.session() as session:
        original = session._compare

        def compare(now: float, start: float, vector: np.ndarray, judged: Any) -> list[Any]:
            call.windows.append((now, vector))
            call.starts.append(start)
            return original(now, start, vector, judged)

        session._compare = compare  # type: ignore[method-assign]
        step = int(CHUNK_SECONDS * rate)
        for first in range(0, samples.size, step):
            session.feed(samples[first : first + step], sample_rate=rate)
    return call


def record(name: str, model: Embedder, enroll: int, partners: int) -> list[Call]:
    from speakerdb import SpeakerDB

    live_change.CHANGE_DROP = float("inf")  # never fires: every window is kept
    live_change.CHANGE_DROP_REEMBEDDED = float("inf")
    live_session.CHANGE_WINDOW_COUNT = 1  # every window on its own: replay averages them
    by_speaker = groups(name)
    out: list[Call] = []
    with tempfile.TemporaryDirectory() as folder:
        db = SpeakerDB.open(f"sqlite:///{folder}/choice.sqlite", model=model)
        for speaker in sorted(by_speaker):
            db.enroll(speaker, by_speaker[speaker][:enroll])
        for call in handover_calls(name, enroll, partners):
            join = call.join if call.handover else None
            out.append(_record(db, call.samples, call.rate, join, (call.first, call.second)))
        db.close()
    return out


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

    live_change.CHANGE_MIN_WINDOWS = min_windows
    same: collections.deque[np.ndarray] = collections.deque(
        maxlen=live_change.CHANGE_HISTORY_WINDOWS
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
    return replay_rule(calls, lambda call: first_change(call, *candidate))


def replay_rule(calls: list[Call], rule: Callable[[Call], float | None]) -> dict[str, Any]:
    """A rule's figures on recorded calls: ``rule(call)`` is the time of the call's first
    change (None: no change)."""
    caught = handovers = early = ones = false = 0
    delays: list[float] = []
    for call in calls:
        time = rule(call)
        if call.join is None:
            ones += 1
            false += time is not None
            continue
        handovers += 1
        if time is not None and time < call.join:
            early += 1
            continue
        if time is not None:
            delays.append(time - call.join)
            caught += time - call.join <= HANDOVER_WITHIN_S
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


def held_out_choices(results: dict[str, dict[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each set, the candidate with the best value on it (the first in the grid's order
    on ties) and its figures on the other set, with its own set's beside them."""
    choices = []
    for chosen_on, held_out in (SETS, SETS[::-1]):
        best = max(results[chosen_on], key=lambda c: results[chosen_on][c]["value"])
        choices.append(
            {
                "chosen_on": chosen_on,
                "candidate": best,
                "held_out": held_out,
                **results[held_out][best],
                "on_own_set": results[chosen_on][best],
            }
        )
    return choices


def _line(title: str, r: dict[str, Any]) -> str:
    return (
        f"{title}: {r['within_3s']} of {r['handovers']} hand-overs within 3 s (median delay "
        f"{r['median_delay_s']} s), {r['changes_before_join']} with a change before the join, "
        f"{r['one_voice_calls_with_a_change']} of {r['one_voice_calls']} one-voice calls with "
        "a change"
    )


def _recorded(
    path: str | None, model: Embedder, enroll: int, partners: int
) -> dict[str, list[Call]]:
    """Every set's recorded calls; with ``path``, kept there (pickle) and read back on a
    later run with the same arguments, so the replay can be rerun without embedding again."""
    import pickle
    from pathlib import Path

    key = (enroll, partners, 2)  # 2: windows' starts and speakers recorded too
    if path is not None and Path(path).exists():
        saved = pickle.loads(Path(path).read_bytes())
        if saved["key"] == key:
            return dict(saved["calls"])
    calls = {name: record(name, model, enroll, partners) for name in SETS}
    if path is not None:
        Path(path).write_bytes(pickle.dumps({"key": key, "calls": calls}))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enroll", type=int, default=3)
    parser.add_argument(
        "--partners", type=int, default=8, help="Hand-overs per speaker (to the next N)."
    )
    parser.add_argument(
        "--windows", default=None, help="Keep the recorded windows in this file (outside the repo)."
    )
    parser.add_argument(
        "--step", type=int, default=1, help="Replay every STEP-th window (2: 0.76 s apart)."
    )
    parser.add_argument(
        "--phase", type=int, default=0, help="With --step: the first window replayed."
    )
    args = parser.parse_args()
    from speakerdb import load_model

    model = load_model(device="cpu")
    current = (
        live_change.CHANGE_DROP,
        live_change.CHANGE_MIN_WINDOWS,
        live_change.CHANGE_CONFIRMATIONS,
        live_session.CHANGE_WINDOW_COUNT,
    )
    calls = _recorded(args.windows, model, args.enroll, args.partners)
    if args.step > 1:
        calls = {
            name: [Call(c.join, c.windows[args.phase :: args.step]) for c in recorded]
            for name, recorded in calls.items()
        }
    candidates = list(itertools.product(DROPS, MIN_WINDOWS, CONFIRMATIONS, WINDOW_COUNTS))
    if current not in candidates:
        candidates.append(current)
    results = {name: {c: replay(calls[name], c) for c in candidates} for name in SETS}
    lines = ["speaker-change constants, chosen on one set, reported on the other:"]
    choices = held_out_choices(results)
    for choice in choices:
        chosen_on, best, held_out = choice["chosen_on"], choice["candidate"], choice["held_out"]
        lines.append(
            _line(
                f"  chosen on {chosen_on} (drop {best[0]}, min windows {best[1]}, "
                f"confirmations {best[2]}, windows per check {best[3]}) -> {held_out}",
                choice,
            )
        )
        lines.append(_line(f"    (on {chosen_on} itself", choice["on_own_set"]) + ")")
    for name in SETS:
        lines.append(
            _line(f"  the library's constants {current} on {name}", results[name][current])
        )
    table = [{"candidate": c, **{name: results[name][c] for name in SETS}} for c in candidates]
    summary = {
        "benchmark": "live_change_choice",
        "enroll": args.enroll,
        "partners": args.partners,
        "step": args.step,
        "phase": args.phase,
        "choices": choices,
        "library_constants": {"candidate": current, **{n: results[n][current] for n in SETS}},
    }
    emit(lines, {**summary, "candidates": table})


if __name__ == "__main__":
    main()
