"""The test calls of the speaker-change benchmarks (live_sessions.py, live_change_choice.py).

A *hand-over* is one speaker's held-out recordings joined (whole, in manifest order,
cyclically from a start recording) until the first voice has FIRST_VOICE_SECONDS of audio,
then another speaker's held-out recordings joined until SECOND_VOICE_SECONDS of audio follow
the join. Both lengths are set a priori, not from results: 6 s is FIRM_SPEECH_SECONDS, by
which the session rule has decided (a change is a change *from an established voice*), and
4 s after the join leave room for the 3 s the goal allows plus a last check. A *one-voice
call* is the same construction without the switch: the same speaker's first part, then more
of the same speaker's recordings until SECOND_VOICE_SECONDS follow the (pseudo) join, so
false changes are counted on calls as long as the hand-overs.

Speaker k's hand-over number j (j = 1 .. min(partners, speakers - 1)) goes to the j-th
next speaker; both voices start at their j-th held-out recording (cyclically), so each
speaker hands over with different recordings to each partner. One one-voice call per
distinct first part.

The earlier construction (OLD): one hand-over per speaker, its first held-out recording
followed by the next speaker's first held-out recording. It made hand-overs from a voice
with under 3 s of speech, or to one with under 3 s of audio, which no 3 s check can catch
within 3 s; ``short_audio`` says which of those a call is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from _common import DATA

FIRST_VOICE_SECONDS = 6.0
SECOND_VOICE_SECONDS = 4.0
HANDOVER_WITHIN_S = 3.0
SHORT_SECONDS = 3.0  # a change check needs about 3 s of speech of a voice


@dataclass(frozen=True)
class JoinedCall:
    """One test call: ``samples`` (n,) int16 at ``rate`` Hz, ``join`` the seconds of audio
    where the second part begins; ``first`` and ``second`` the two speakers (equal in a
    one-voice call)."""

    samples: np.ndarray
    rate: int
    join: float
    first: str
    second: str

    @property
    def handover(self) -> bool:
        return self.first != self.second

    @property
    def after_join_seconds(self) -> float:
        return self.samples.size / self.rate - self.join


def groups(name: str) -> dict[str, list[Path]]:
    """The set's recordings by speaker, in manifest order."""
    out: dict[str, list[Path]] = {}
    for line in (DATA / name / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            out.setdefault(str(item["label"]), []).append(DATA / name / item["audio_filepath"])
    return out


def read_int16(path: Path) -> tuple[np.ndarray, int]:
    """A recording's first channel as (n,) int16 and its rate in Hz."""
    samples, rate = sf.read(path, dtype="int16", always_2d=True)
    return np.ascontiguousarray(samples[:, 0]), int(rate)


def _joined(
    paths: list[Path], start: int, seconds: float, skip: frozenset[int] = frozenset()
) -> tuple[list[np.ndarray], int, set[int]]:
    """Whole recordings from ``paths[start]`` on (cyclically, leaving out ``skip``) until
    they hold ``seconds`` of audio: the pieces, their rate, the indices used. ValueError if
    the recordings run out first."""
    pieces: list[np.ndarray] = []
    used: set[int] = set()
    rate = 0
    total = 0.0
    for step in range(len(paths)):
        index = (start + step) % len(paths)
        if index in skip:
            continue
        samples, rate = read_int16(paths[index])
        pieces.append(samples)
        used.add(index)
        total += samples.size / rate
        if total >= seconds:
            return pieces, rate, used
    raise ValueError(f"{len(paths)} recordings hold under {seconds} s of audio")


def _call(
    first: str, second: str, a: list[np.ndarray], b: list[np.ndarray], rate: int
) -> JoinedCall:
    head = np.concatenate(a)
    return JoinedCall(np.concatenate([head, *b]), rate, head.size / rate, first, second)


def calls(name: str, enroll: int, partners: int) -> list[JoinedCall]:
    """The set's hand-overs (up to ``partners`` per speaker) and one-voice calls, built
    from the recordings after each speaker's first ``enroll`` (held out)."""
    by_speaker = groups(name)
    speakers = sorted(by_speaker)
    held = {s: by_speaker[s][enroll:] for s in speakers}
    out: list[JoinedCall] = []
    for k, speaker in enumerate(speakers):
        firsts: set[int] = set()
        for j in range(1, min(partners, len(speakers) - 1) + 1):
            other = speakers[(k + j) % len(speakers)]
            start = (j - 1) % len(held[speaker])
            a, rate, used = _joined(held[speaker], start, FIRST_VOICE_SECONDS)
            b, _, _ = _joined(held[other], (j - 1) % len(held[other]), SECOND_VOICE_SECONDS)
            out.append(_call(speaker, other, a, b, rate))
            if start in firsts:
                continue
            firsts.add(start)
            # The same first part, then the same speaker's next recordings (none reused).
            more, _, _ = _joined(
                held[speaker], start + len(used), SECOND_VOICE_SECONDS, frozenset(used)
            )
            out.append(_call(speaker, speaker, a, more, rate))
    return out


def old_handovers(name: str, enroll: int) -> list[JoinedCall]:
    """The earlier construction: each speaker's first held-out recording, then the next
    speaker's."""
    by_speaker = groups(name)
    speakers = sorted(by_speaker)
    out = []
    for k, speaker in enumerate(speakers):
        other = speakers[(k + 1) % len(speakers)]
        a, rate = read_int16(by_speaker[speaker][enroll])
        b, _ = read_int16(by_speaker[other][enroll])
        out.append(_call(speaker, other, [a], [b], rate))
    return out


def short_audio(call: JoinedCall, speech_at_join: float) -> str | None:
    """Why a hand-over cannot be caught within 3 s by a 3 s check, if it cannot: the first
    voice had under SHORT_SECONDS of speech (``speech_at_join``: the session's count) or
    the second lasts under SHORT_SECONDS of audio. None: neither."""
    if speech_at_join < SHORT_SECONDS:
        return "first voice under 3 s of speech"
    if call.after_join_seconds < SHORT_SECONDS:
        return "second voice under 3 s of audio"
    return None
