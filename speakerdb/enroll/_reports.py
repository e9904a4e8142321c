"""What an enrollment did, input by input, and what a manifest enrollment did as a whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "RECOMMENDED_SPEECH_SECONDS",
    "EnrollmentReport",
    "EnrollmentWarning",
    "InputReport",
    "InputStatus",
    "ManifestSummary",
    "WarningCode",
]

RECOMMENDED_SPEECH_SECONDS = 8.0
"""Net speech (s) below which an enrollment gets a warning: voiceprints made from less are
noticeably less reliable (more false rejections of the genuine speaker)."""

InputStatus = Literal["accepted", "duplicate", "rejected", "skipped", "refused"]

WarningCode = Literal["inconsistent_recording", "little_speech"]


@dataclass(frozen=True)
class EnrollmentWarning:
    """Something to look at, though the enrollment succeeded.

    code: "inconsistent_recording" (``source`` scores below the threshold against the
    speaker's other recordings: probably another speaker) or "little_speech" (the speaker has
    less than :data:`RECOMMENDED_SPEECH_SECONDS` of speech in total).
    """

    code: WarningCode
    message: str
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputReport:
    """One input recording. ``status``: accepted (stored), duplicate (the same decoded audio
    is already enrolled for this speaker: not stored twice), rejected (``reason`` is the error
    code: unreadable, too_short, no_speech, ...; ``message`` says why), skipped (mode "skip"
    and the speaker exists), refused (an append to an enrolled speaker refused as a whole
    because recordings do not match its voiceprint -- ``reason`` "voiceprint_mismatch"
    for those, "refused_with_request" for the others; nothing was stored).
    ``consistency``: cosine of this recording with the speaker's other recordings (their
    centroid), when there are others. ``bandwidth_hz``: its audio bandwidth, a quality
    measure for calibration (None if it could not be measured)."""

    source: str
    status: InputStatus
    reason: str | None = None
    message: str | None = None
    sha256: str | None = None
    duration: float | None = None
    speech_seconds: float | None = None
    consistency: float | None = None
    bandwidth_hz: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnrollmentReport:
    """The outcome of enrolling one speaker.

    ``changed``: the database was modified. ``created``: the speaker is new. ``utterances`` and
    ``total_speech_seconds`` describe the speaker after the call (0 if it does not exist);
    ``net_speech_seconds`` is the speech accepted by this call.
    """

    speaker: str
    mode: str
    inputs: list[InputReport] = field(default_factory=list)
    changed: bool = False
    created: bool = False
    utterances: int = 0
    total_speech_seconds: float = 0.0
    net_speech_seconds: float = 0.0
    warnings: list[EnrollmentWarning] = field(default_factory=list)

    def count(self, status: InputStatus) -> int:
        return sum(1 for i in self.inputs if i.status == status)

    @property
    def accepted(self) -> int:
        return self.count("accepted")

    @property
    def rejected(self) -> int:
        return self.count("rejected")

    @property
    def duplicates(self) -> int:
        return self.count("duplicate")

    @property
    def refused(self) -> int:
        return self.count("refused")

    @property
    def little_speech(self) -> bool:
        """The speaker exists with less speech than recommended."""
        return 0 < self.total_speech_seconds < RECOMMENDED_SPEECH_SECONDS

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            accepted=self.accepted,
            duplicates=self.duplicates,
            rejected=self.rejected,
            refused=self.refused,
        )
        return out


@dataclass
class ManifestSummary:
    """A manifest enrollment: one report per speaker (in order of first appearance) and the
    totals. ``little_speech`` names the speakers changed by this run that have less speech
    than recommended; ``warnings`` are the other warnings of the speakers it changed."""

    files: int
    reports: list[EnrollmentReport]

    @property
    def speakers(self) -> int:
        return len(self.reports)

    @property
    def created(self) -> int:
        return sum(1 for r in self.reports if r.created)

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.reports)

    @property
    def duplicates(self) -> int:
        return sum(r.duplicates for r in self.reports)

    @property
    def rejected(self) -> int:
        return sum(r.rejected for r in self.reports)

    @property
    def refused(self) -> int:
        """Recordings of refused appends (see :class:`InputReport`)."""
        return sum(r.refused for r in self.reports)

    @property
    def little_speech(self) -> list[str]:
        return [r.speaker for r in self.reports if r.changed and r.little_speech]

    @property
    def warnings(self) -> list[EnrollmentWarning]:
        return [
            w for r in self.reports if r.changed for w in r.warnings if w.code != "little_speech"
        ]

    def totals(self) -> dict[str, int]:
        return {
            "speakers": self.speakers,
            "files": self.files,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "refused": self.refused,
            "created": self.created,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.totals(), "speakers": [r.to_dict() for r in self.reports]}
