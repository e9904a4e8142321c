"""Result types shared by the model layer and the SpeakerDB facade.

Every decision result reports the score, the threshold it was compared with and the model
that made the vectors, so that a caller can always tell why it was accepted or rejected.
Scores are cosine similarities in [-1, 1], unless ``normalization`` names a score
normalisation ("asnorm"); the raw cosine is then in ``cosine``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Comparison", "Identification", "Match", "Verification"]


@dataclass(frozen=True)
class Comparison:
    """File against file: ``same_speaker`` iff ``score >= threshold``."""

    score: float
    threshold: float
    same_speaker: bool
    model: str
    a: str = ""
    b: str = ""
    normalization: str | None = None
    cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """A probe against an enrolled speaker's voiceprint: ``accepted`` iff score >= threshold."""

    score: float
    threshold: float
    accepted: bool
    speaker: str
    model: str
    source: str = ""
    normalization: str | None = None
    cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Match:
    """One candidate of an identification: an enrolled speaker and its score."""

    name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identification:
    """Open-set identification: ``best`` is the top match if it reaches the threshold, else
    None (an unknown speaker). ``matches`` are the top-k candidates, best first."""

    best: str | None
    matches: list[Match] = field(default_factory=list)
    threshold: float = 0.0
    model: str = ""
    source: str = ""
    normalization: str | None = None

    @property
    def score(self) -> float | None:
        return self.matches[0].score if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "score": self.score,
            "matches": [m.to_dict() for m in self.matches],
            "threshold": self.threshold,
            "model": self.model,
            "source": self.source,
            "normalization": self.normalization,
        }
