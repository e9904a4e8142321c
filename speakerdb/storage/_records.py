"""Plain records going in and out of the store (no SQLAlchemy objects leak out of it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "CALIBRATION_SOURCES",
    "AppendCheck",
    "CalibrationSetting",
    "Candidate",
    "CompactResult",
    "EnrollMode",
    "EnrollRequest",
    "EnrollResult",
    "NewUtterance",
    "SpeakerRecord",
    "UtteranceRecord",
    "vectors_from_bytes",
]

EnrollMode = Literal["append", "overwrite", "skip"]
ENROLL_MODES: tuple[str, ...] = ("append", "overwrite", "skip")

AppendCheck = Callable[["SpeakerRecord", npt.NDArray[np.float32], Sequence["NewUtterance"]], bool]
"""Called inside the enrolling transaction, the speaker's row locked, for an append that
adds recordings to an existing speaker: ``check(speaker as it stands, its (D,) unit-norm
centroid, the new utterances)``; False refuses the request (nothing of it is stored)."""


def vectors_from_bytes(blobs: list[bytes], dimension: int) -> npt.NDArray[np.float32]:
    """(n,) float32 byte strings, as stored in SQL -> (n, dimension) float32."""
    if not blobs:
        return np.zeros((0, dimension), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension).copy()


@dataclass(frozen=True)
class NewUtterance:
    """An embedded recording to enroll. embedding: (D,) float32; duration and speech_seconds
    in seconds; sha256 of the decoded audio (duplicates are recognised by it); bandwidth_hz:
    its audio bandwidth in Hz (None: unknown, which keeps its speaker off calibration)."""

    embedding: npt.NDArray[np.float32]
    sha256: str
    source: str | None = None
    duration: float = 0.0
    speech_seconds: float = 0.0
    bandwidth_hz: float | None = None


@dataclass(frozen=True)
class EnrollRequest:
    name: str
    utterances: list[NewUtterance]
    mode: EnrollMode = "append"
    metadata: dict[str, Any] | None = None
    # Retention and consent (see speakerdb.storage._governance): set on the speaker when
    # given, left as they are when None.
    expires_at: dt.datetime | None = None
    consent: str | None = None


@dataclass(frozen=True)
class SpeakerRecord:
    """An enrolled speaker. ``utterances``, ``speech_seconds`` (total, s) and
    ``bandwidth_hz`` (speech-weighted mean of its recordings', None when any is unknown) are
    the enrollment side's quality measures for calibration. ``metadata_error``: why the
    stored metadata is not returned (``metadata`` is then None): stored by an earlier
    release that did not check it, it is not JSON any client can read (see
    :mod:`speakerdb.storage._metadata`); None when all is well (and left out of
    :meth:`to_dict`)."""

    id: int
    name: str
    metadata: dict[str, Any] | None
    status: str
    utterances: int
    speech_seconds: float
    created_at: dt.datetime
    updated_at: dt.datetime
    bandwidth_hz: float | None = None
    metadata_error: str | None = None
    expires_at: dt.datetime | None = None
    consent: str | None = None
    consent_at: dt.datetime | None = None
    consent_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for field_name in ("created_at", "updated_at", "expires_at", "consent_at"):
            value = getattr(self, field_name)
            out[field_name] = value.isoformat() if value is not None else None
        if self.metadata_error is None:
            del out["metadata_error"]
        return out


@dataclass(frozen=True)
class UtteranceRecord:
    id: int
    sha256: str
    source: str | None
    duration: float
    speech_seconds: float
    created_at: dt.datetime
    bandwidth_hz: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        return out


@dataclass(frozen=True)
class EnrollResult:
    """What one enrollment did. ``speaker`` is None only when nothing existed and nothing was
    stored. ``added`` / ``duplicates`` list the sha256 of the utterances in each case.
    ``refused``: the append guard turned the request down (nothing of it was stored;
    ``speaker`` is the speaker as it stands).

    When the speaker's voiceprint changed, ``utterance_hashes`` and ``utterance_embeddings``
    ((n, D) float32) hold all of its recordings as the enrolling transaction left them, in
    enrollment order, so reports never need a second, racing read.
    """

    name: str
    speaker: SpeakerRecord | None
    created: bool = False
    skipped: bool = False
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    removed: int = 0
    utterance_hashes: list[str] = field(default_factory=list)
    utterance_embeddings: npt.NDArray[np.float32] | None = None
    refused: bool = False


@dataclass(frozen=True)
class Candidate:
    """A speaker found by a vector search, with its exact cosine score (or, re-scored, its
    normalised score) and its enrollment quality: recordings, total speech seconds and
    bandwidth (Hz, None when unknown)."""

    id: int
    name: str
    score: float
    utterances: int = 0
    speech_seconds: float = 0.0
    bandwidth_hz: float | None = None


CALIBRATION_SOURCES = ("bundled", "database", "self")


@dataclass(frozen=True)
class CalibrationSetting:
    """How a database decides for one score normalisation (a ``calibrations`` row; see
    :class:`speakerdb.storage._schema.Calibration` for the meaning of every field).

    normalization: "none" or "asnorm". kind: "threshold" (``threshold`` on the score scale)
    or "llr" (``source`` "bundled" or "database", whose ``calibration`` is the JSON dict,
    and the operating point ``p_target`` / ``c_miss`` / ``c_fa`` or ``target_far``).
    """

    normalization: str
    kind: str
    threshold: float | None = None
    note: str | None = None
    source: str | None = None
    calibration: dict[str, Any] | None = None
    p_target: float | None = None
    c_miss: float | None = None
    c_fa: float | None = None
    target_far: float | None = None
    trials_sha256: str | None = None
    target_trials: int | None = None
    nontarget_trials: int | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class CompactResult:
    """What :meth:`EnrollmentStore.compact` did: the database (password hidden) and the
    bytes its vector-holding tables (PostgreSQL) or file and write-ahead log (SQLite) took
    before and after."""

    database: str
    before_bytes: int
    after_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
