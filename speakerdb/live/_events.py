"""What a live session tells its caller: events as they happen and a summary at the end.

Every event is a frozen dataclass with ``type`` and ``time`` (seconds of audio since the
session began, at the end of the chunk that produced it) and ``to_dict()``, a JSON-ready dict
(the CLI's ``--json`` lines and the WebSocket's text frames are these dicts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from speakerdb._results import DecisionRule

__all__ = [
    "ACCEPT",
    "IDENTIFIED",
    "NOT_ENOUGH_SPEECH",
    "REJECT",
    "SPOOF_DETECTED",
    "UNKNOWN",
    "DecisionEvent",
    "ErrorEvent",
    "Event",
    "ProgressEvent",
    "Segment",
    "SpeakerChange",
    "Summary",
]

NOT_ENOUGH_SPEECH = "NOT_ENOUGH_SPEECH"
ACCEPT, REJECT = "ACCEPT", "REJECT"  # verify sessions
IDENTIFIED, UNKNOWN = "IDENTIFIED", "UNKNOWN"  # identify sessions
SPOOF_DETECTED = "SPOOF_DETECTED"  # the database's countermeasure caught an attack


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class ProgressEvent:
    """Speech heard so far: ``speech_seconds`` (whole session, by the speech detector) and
    ``status``, NOT_ENOUGH_SPEECH until a decision is possible, then the current decision."""

    time: float
    speech_seconds: float
    status: str
    type: str = "progress"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "time": _round(self.time),
            "speech_seconds": _round(self.speech_seconds),
            "status": self.status,
        }


@dataclass(frozen=True)
class DecisionEvent:
    """A new decision about the current segment (the voice since the last speaker change).

    decision: ACCEPT / REJECT (verify) or IDENTIFIED / UNKNOWN (identify). speaker: the
    speaker verified, or the one identified (None for UNKNOWN). llr: the calibrated LLR (None
    where the rule is not calibrated); score / threshold: what the rule compared;
    decision_rule: the rule, as offline answers carry it. speech_seconds: the segment's
    speech the decision rests on (the engine's measure after silence trimming, as the
    calibration sees it). early: taken before :data:`~._session.FIRM_SPEECH_SECONDS` of
    speech. final: the decision at close, on all the segment's audio. spoof: where the
    database has a countermeasure, its answer on the segment's first seconds (``{"model",
    "score", "llr", "detected"}`` as offline answers carry it), checked when the segment is
    first decided; a detected attack is the decision SPOOF_DETECTED, never accepted.
    """

    time: float
    segment: int
    decision: str
    speaker: str | None
    llr: float | None
    score: float
    threshold: float
    decision_rule: DecisionRule
    speech_seconds: float
    early: bool = False
    final: bool = False
    spoof: dict[str, Any] | None = None
    type: str = "decision"

    @property
    def accepted(self) -> bool:
        return self.decision in (ACCEPT, IDENTIFIED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "time": _round(self.time),
            "segment": self.segment,
            "decision": self.decision,
            "speaker": self.speaker,
            "llr": _round(self.llr),
            "score": _round(self.score),
            "threshold": _round(self.threshold),
            "decision_rule": self.decision_rule.to_dict(),
            "speech_seconds": _round(self.speech_seconds),
            "early": self.early,
            "final": self.final,
            **({"spoof": self.spoof} if self.spoof is not None else {}),
        }


@dataclass(frozen=True)
class SpeakerChange:
    """The voice of the last seconds of speech no longer matches the decided one.

    time: when it was noticed (audio seconds); window_start: where the speech window that
    stopped matching begins (the hand-over is at or after it); previous: the voice decided
    on before (a name, or None for an unknown voice); llr / score: the window scored against
    that voiceprint; segment: the new segment's index."""

    time: float
    window_start: float
    previous: str | None
    llr: float | None
    score: float
    segment: int
    type: str = "speaker_change"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("time", "window_start", "llr", "score"):
            out[key] = _round(out[key])
        return out


@dataclass(frozen=True)
class ErrorEvent:
    """Bad input or a limit reached. error: the speakerdb error's code (e.g. "invalid",
    "usage", "limit"); fatal: the session is over (a limit), else it goes on unchanged."""

    time: float
    error: str
    message: str
    fatal: bool = False
    type: str = "error"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = _round(self.time)
        return out


Event = ProgressEvent | DecisionEvent | SpeakerChange | ErrorEvent


@dataclass(frozen=True)
class Segment:
    """A stretch of one voice, from ``start`` to ``end`` (audio seconds), cut at speaker
    changes; decision / speaker: its last decision (NOT_ENOUGH_SPEECH if none)."""

    start: float
    end: float
    decision: str
    speaker: str | None
    speech_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": _round(self.start),
            "end": _round(self.end),
            "decision": self.decision,
            "speaker": self.speaker,
            "speech_seconds": _round(self.speech_seconds),
        }


@dataclass(frozen=True)
class Summary:
    """The end of a session. mode: "verify" or "identify"; speaker: the claimed speaker
    (verify). duration / speech_seconds: audio and speech seconds received. decision: the
    last decision (the final one of the last segment), or NOT_ENOUGH_SPEECH; accepted: it is
    ACCEPT / IDENTIFIED. decisions: every decision event, in order; changes: every speaker
    change; segments: the voices in order with their names (identify) or decisions. reason:
    why it ended ("closed", or the limit reached)."""

    mode: str
    speaker: str | None
    duration: float
    speech_seconds: float
    decision: str
    accepted: bool
    decisions: list[DecisionEvent] = field(default_factory=list)
    changes: list[SpeakerChange] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    reason: str = "closed"
    type: str = "summary"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "mode": self.mode,
            "speaker": self.speaker,
            "duration": _round(self.duration),
            "speech_seconds": _round(self.speech_seconds),
            "decision": self.decision,
            "accepted": self.accepted,
            "decisions": [d.to_dict() for d in self.decisions],
            "changes": [c.to_dict() for c in self.changes],
            "segments": [s.to_dict() for s in self.segments],
            "reason": self.reason,
        }
