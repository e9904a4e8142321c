"""What self-calibration reads from a store: every enrolled recording's embedding and
quality, and a cheap summary of the enrollments to tell when they changed enough to re-fit.

Kept apart from :mod:`speakerdb.storage._store` (which it only reads through its engine):
these are bulk reads for one purpose, no part of the store's write path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from speakerdb.errors import UsageError
from speakerdb.storage._audit import PendingEntry, append
from speakerdb.storage._engine import read_transaction, retrying, store_error, write_transaction
from speakerdb.storage._records import vectors_from_bytes
from speakerdb.storage._rows import lock_state
from speakerdb.storage._schema import Speaker, StoreState, Utterance

if TYPE_CHECKING:
    from speakerdb.storage._store import EnrollmentStore

__all__ = [
    "AUTO_DEFAULT",
    "EnrollmentRows",
    "EnrollmentState",
    "enrollment_rows",
    "enrollment_state",
    "set_calibration_default",
]

AUTO_DEFAULT = "auto"
"""``store_state.calibration_default`` of a database that self-calibrates by itself: the
bundled calibration until it has enough enrollments, then its own, re-fitted when they
change enough."""


@dataclass(frozen=True)
class EnrollmentRows:
    """Every enrolled recording of the database's model. speaker_ids: (n,) int64; vectors:
    (n, D) float32 unit-norm; speech_seconds: (n,) float64; bandwidth_hz: (n,) float64, NaN
    where unknown (enrolled before schema 0004)."""

    speaker_ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    speech_seconds: npt.NDArray[np.float64]
    bandwidth_hz: npt.NDArray[np.float64]


@dataclass(frozen=True)
class EnrollmentState:
    """A summary of the enrollments: speakers, those with two or more recordings, recordings,
    and the highest recording id (ids are never reused, so ``surviving(max_id)`` below the
    recording count at that time means some recording was deleted since)."""

    speakers: int
    eligible: int
    recordings: int
    max_utterance_id: int

    def to_dict(self) -> dict[str, int]:
        return {
            "speakers": self.speakers,
            "eligible": self.eligible,
            "recordings": self.recordings,
            "max_utterance_id": self.max_utterance_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EnrollmentState | None:
        """Inverse of :meth:`to_dict`; None for anything malformed (then a re-fit is due)."""
        try:
            return cls(
                int(data["speakers"]),
                int(data["eligible"]),
                int(data["recordings"]),
                int(data["max_utterance_id"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def enrollment_rows(store: EnrollmentStore, dimension: int) -> EnrollmentRows:
    """Every recording of the store's tenant: its embedding and quality, ordered by speaker
    then enrollment (one read transaction). Raises StoreError."""
    try:
        with read_transaction(store.engine) as conn:
            rows = conn.execute(
                select(
                    Utterance.speaker_id,
                    Utterance.embedding,
                    Utterance.speech_seconds,
                    Utterance.bandwidth_hz,
                )
                .join(Speaker, Speaker.id == Utterance.speaker_id)
                .where(Speaker.tenant_id == store.tenant_id(conn))
                .order_by(Utterance.speaker_id, Utterance.id)
            ).all()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot read the enrollments") from None
    return EnrollmentRows(
        np.array([r.speaker_id for r in rows], dtype=np.int64),
        vectors_from_bytes([r.embedding for r in rows], dimension),
        np.array([r.speech_seconds for r in rows], dtype=np.float64),
        np.array(
            [np.nan if r.bandwidth_hz is None else r.bandwidth_hz for r in rows],
            dtype=np.float64,
        ),
    )


def enrollment_state(
    store: EnrollmentStore, since: int | None = None
) -> tuple[EnrollmentState, int]:
    """The summary of the store's tenant's enrollments now, and how many recordings with an
    id <= ``since`` remain (0 without ``since``). Three counts in one read transaction:
    cheap enough to run before each decision of a database in auto mode."""
    try:
        with read_transaction(store.engine) as conn:
            tenant_id = store.tenant_id(conn)
            speakers = conn.execute(
                select(func.count()).select_from(Speaker).where(Speaker.tenant_id == tenant_id)
            ).scalar_one()
            eligible = conn.execute(
                select(func.count()).where(
                    Speaker.tenant_id == tenant_id, Speaker.utterance_count >= 2
                )
            ).scalar_one()
            mine = (
                select(Utterance.id)
                .join(Speaker, Speaker.id == Utterance.speaker_id)
                .where(Speaker.tenant_id == tenant_id)
                .subquery()
            )
            recordings, top = conn.execute(
                select(func.count(), func.coalesce(func.max(mine.c.id), 0))
            ).one()
            surviving = 0
            if since is not None:
                surviving = conn.execute(
                    select(func.count()).where(mine.c.id <= since)
                ).scalar_one()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot read the enrollments") from None
    state = EnrollmentState(int(speakers), int(eligible), int(recordings), int(top))
    return state, int(surviving)


def set_calibration_default(store: EnrollmentStore, value: str) -> None:
    """Set which calibration applies where no setting is stored: "bundled" or
    :data:`AUTO_DEFAULT`. Raises UsageError (read-only, unknown value), StoreError."""
    if value not in ("bundled", AUTO_DEFAULT):
        raise UsageError(f"unknown calibration default {value!r}")
    if store.read_only:
        raise UsageError(
            f"cannot change the calibration: {store.location.display} was opened read-only"
        )

    def attempt() -> None:
        with write_transaction(store.engine) as conn:
            lock_state(conn)
            conn.execute(
                update(StoreState).where(StoreState.id == 1).values(calibration_default=value)
            )
            # Which calibration decides is a change users rely on: audited with it.
            detail = {"calibration_default": value}
            entry = PendingEntry("calibration", decision="set", detail=detail)
            append(conn, store.writing_tenant(conn), [entry])

    retrying(attempt, f"cannot change the calibration of {store.location.display}")
