"""What diarization answers: turns (who spoke when) and the speakers behind the labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from speakerdb._results import DecisionRule
from speakerdb.diarize._rttm import RttmTurn, format_rttm

__all__ = ["Diarization", "DiarizedSpeaker", "SpeakerMatch", "Turn"]


class Turn(NamedTuple):
    """One turn: ``start`` / ``end`` in seconds, the speaker's ``label`` (an enrolled name,
    ``unknown_N``, or ``speaker_N`` without a database), the enrolled ``name`` (None when
    nobody was recognised) and the ``score`` that named it (None when unnamed)."""

    start: float
    end: float
    label: str
    name: str | None = None
    score: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "label": self.label,
            "name": self.name,
            "score": self.score,
        }


@dataclass(frozen=True)
class SpeakerMatch:
    """An enrolled speaker scored against a cluster's voiceprint: the score the rule
    compares (LLR when calibrated, else cosine), the raw cosine, the LLR (None without a
    calibration) and whether the rule accepts it."""

    name: str
    score: float
    cosine: float
    llr: float | None
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "cosine": self.cosine,
            "llr": self.llr,
            "accepted": self.accepted,
        }


@dataclass(frozen=True)
class DiarizedSpeaker:
    """One voice found in the recording (one cluster).

    label: its label in the turns. name: the enrolled speaker it was assigned (one-to-one),
    or None. speech_seconds: total length of its turns; turns: how many. score / cosine /
    llr: of the assigned speaker, else of the best candidate (None when nobody is
    enrolled). matches: the best candidates, best first. decision_rule: the rule the
    candidates were decided with. note: why it was not named although someone matched
    (too little speech; the match went to another voice; an attack detected). spoof: the
    database's countermeasure's answer on the voice's speech (``{"model", "score", "llr",
    "detected"}``), for voices the rule named, where the database has one.
    """

    label: str
    name: str | None
    speech_seconds: float
    turns: int
    score: float | None = None
    cosine: float | None = None
    llr: float | None = None
    matches: list[SpeakerMatch] = field(default_factory=list)
    decision_rule: DecisionRule | None = None
    note: str | None = None
    spoof: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "speech_seconds": round(self.speech_seconds, 3),
            "turns": self.turns,
            "score": self.score,
            "cosine": self.cosine,
            "llr": self.llr,
            "matches": [m.to_dict() for m in self.matches],
            "decision_rule": self.decision_rule.to_dict() if self.decision_rule else None,
            "note": self.note,
            **({"spoof": self.spoof} if self.spoof is not None else {}),
        }


@dataclass(frozen=True)
class Diarization:
    """Who spoke when in one recording.

    source: the path or ``<array>``; duration: seconds; turns: sorted by start, never
    overlapping; speakers: one per label, in order of first appearance; model: the model's
    label; threshold / decision_rule: the rule that named the voices (None without a
    database); parameters: the settings used (window, hop, clustering threshold, ...);
    notes: what was asked and could not be done as asked (a number of voices more than
    the speech can hold: the number was lowered, see ``parameters["voice_limit"]``).
    """

    source: str
    duration: float
    turns: list[Turn]
    speakers: list[DiarizedSpeaker]
    model: str
    threshold: float | None = None
    decision_rule: DecisionRule | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def rttm_turns(self, file_id: str | None = None) -> list[RttmTurn]:
        """The turns as RTTM lines; ``file_id`` defaults to the source's stem."""
        fid = file_id if file_id is not None else _stem(self.source)
        return [RttmTurn(fid, t.start, t.end - t.start, t.label) for t in self.turns]

    def to_rttm(self, file_id: str | None = None) -> str:
        return format_rttm(self.rttm_turns(file_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "duration": round(self.duration, 3),
            "model": self.model,
            "threshold": self.threshold,
            "decision_rule": self.decision_rule.to_dict() if self.decision_rule else None,
            "num_speakers": self.num_speakers,
            "speakers": [s.to_dict() for s in self.speakers],
            "turns": [t.to_dict() for t in self.turns],
            "parameters": dict(self.parameters),
            "notes": list(self.notes),
        }


def _stem(source: str) -> str:
    if source == "<array>":
        return "array"
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name
