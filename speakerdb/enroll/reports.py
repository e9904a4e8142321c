"""What an enrollment did, input by input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["EnrollmentReport", "InputReport", "InputStatus"]

InputStatus = Literal["accepted", "duplicate", "rejected", "skipped"]


@dataclass
class InputReport:
    """One input recording. ``status``: accepted (stored), duplicate (the same decoded audio
    is already enrolled for this speaker: not stored twice), rejected (``reason`` is the error
    code: unreadable, too_short, no_speech, ...; ``message`` says why), skipped (mode "skip"
    and the speaker exists). ``consistency``: cosine of this recording with the speaker's
    other recordings (their centroid), when there are others."""

    source: str
    status: InputStatus
    reason: str | None = None
    message: str | None = None
    sha256: str | None = None
    duration: float | None = None
    speech_seconds: float | None = None
    consistency: float | None = None

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
    warnings: list[str] = field(default_factory=list)

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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(accepted=self.accepted, duplicates=self.duplicates, rejected=self.rejected)
        return out
