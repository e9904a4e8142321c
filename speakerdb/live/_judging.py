"""What a live session asks of the database and gets back: the :data:`Judge` (the one
decision rule on some audio or an embedding already made), its :class:`Judgement`, the
voices a window is compared with (:class:`Anchor`, :class:`Probe`), the countermeasure
(:class:`Screen`, :class:`SpoofCheck`) and a session's :class:`SessionLimits`. Values only:
the facade builds them from the store and the policy (:mod:`speakerdb.enroll._session_verb`),
the session (:mod:`speakerdb.live._session`) uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb._results import DecisionRule
from speakerdb.errors import UsageError

__all__ = ["Anchor", "Judge", "Judgement", "Probe", "Screen", "SessionLimits", "SpoofCheck"]


@dataclass(frozen=True)
class SessionLimits:
    """max_seconds: audio seconds a session may receive; max_bytes: input bytes;
    max_silence_seconds: audio seconds in a row without speech. Reaching one ends the
    session with a fatal ``limit`` error event."""

    max_seconds: float = 3600.0
    max_bytes: int = 256 * 1024 * 1024
    max_silence_seconds: float = 300.0

    def check(self) -> None:
        if not (self.max_seconds > 0 and self.max_bytes > 0 and self.max_silence_seconds > 0):
            raise UsageError("session limits must be positive")


@dataclass(frozen=True)
class Judgement:
    """The one rule's answer about some audio. accepted: the rule accepts; speaker: the
    speaker verified, or the best candidate (identify; None when nobody is enrolled); llr
    (None: not calibrated), score, threshold, rule: as in offline results; speech_seconds:
    the engine's speech measure of the audio scored."""

    accepted: bool
    speaker: str | None
    llr: float | None
    score: float
    threshold: float
    rule: DecisionRule
    speech_seconds: float
    vector: npt.NDArray[np.float32] | None = None
    bandwidth_hz: float | None = None


@dataclass(frozen=True)
class Anchor:
    """A voice without a name (an unknown caller): the (D,) unit-norm embedding of a
    segment and its quality (the engine's speech seconds, bandwidth in Hz), so that later
    speech can be compared with it by the one rule, as ``compare`` compares two files."""

    vector: npt.NDArray[np.float32]
    speech_seconds: float
    bandwidth_hz: float | None


@dataclass(frozen=True)
class Probe:
    """An embedding already made (the mean of a segment's window embeddings, see
    :class:`~speakerdb.live._windows.SegmentWindows`): the (D,) unit-norm vector and the
    quality the calibration reads (speech seconds, bandwidth in Hz), judged as is."""

    vector: npt.NDArray[np.float32]
    speech_seconds: float
    bandwidth_hz: float | None


Judge = Callable[["npt.NDArray[np.float32] | Probe", "str | Anchor | None"], Judgement | None]
"""``judge(samples, against)``: (n,) float32 audio at 16 kHz, embedded by the engine as a
file is, or a :class:`Probe` (no embedding: only the rule); ``against`` a speaker's name
(verify against that voiceprint), an :class:`Anchor` (same voice as it? the compare rule)
or None (identify among everyone). None when the audio cannot be embedded (too little
speech)."""


@dataclass(frozen=True)
class SpoofCheck:
    """A countermeasure's answer on some audio: detected (None: not judged, e.g. too short
    or no calibration) and answer, the ``spoof`` part of answers."""

    detected: bool | None
    answer: dict[str, Any]


@dataclass(frozen=True)
class Screen:
    """The database's countermeasure for a session: ``check(samples)`` on (n,) float32
    16 kHz audio, of which it reads the first ``samples``."""

    samples: int
    check: Callable[[npt.NDArray[np.float32]], SpoofCheck]
