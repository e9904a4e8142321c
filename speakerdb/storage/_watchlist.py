"""Watchlists: each tenant's voices of known fraudsters (``watchlist`` rows). Every verify
and identify of the tenant scores its probe against them as well (see
:mod:`speakerdb.enroll._watchlist`). They are kept apart from the speakers: never in the
vector index, never an identification's answer, never listed with the speakers.

An entry holds one voiceprint: the unit-norm mean of its recordings' embeddings, of the
database's model, with the quality measures calibration reads (speech seconds, recordings,
bandwidth). Adding to an existing name replaces its voiceprint. Additions and removals are
audited in the tenant's log; removing an entry erases its voiceprint like a delete (the
files are compacted by ``db compact``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from speakerdb._identity import ModelIdentity
from speakerdb.errors import NotFoundError, UsageError
from speakerdb.storage._audit import PendingEntry, append
from speakerdb.storage._names import validated_name
from speakerdb.storage._rows import aware, bandwidth_of, centroid_of, ensure_model, lock_state
from speakerdb.storage._schema import StoreState, WatchlistEntry, utcnow

if TYPE_CHECKING:
    from speakerdb.storage._store import EnrollmentStore

__all__ = ["WatchedVoice", "WatchlistRecord", "add_voice", "remove_voice", "watched", "watchlist"]


@dataclass(frozen=True)
class WatchlistRecord:
    """A watchlist entry as listed (without its voiceprint)."""

    name: str
    utterances: int
    speech_seconds: float
    bandwidth_hz: float | None
    created_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "utterances": self.utterances,
            "speech_seconds": self.speech_seconds,
            "bandwidth_hz": self.bandwidth_hz,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class WatchedVoice:
    """A watchlist voice to score a probe against: (D,) float32 unit-norm voiceprint."""

    name: str
    voiceprint: npt.NDArray[np.float32]
    utterances: int
    speech_seconds: float
    bandwidth_hz: float | None


def add_voice(
    store: EnrollmentStore,
    name: str,
    vectors: npt.NDArray[np.float32],
    speech_seconds: list[float],
    bandwidths: list[float | None],
    model: ModelIdentity,
) -> WatchlistRecord:
    """Put ``name`` on the store's tenant's watchlist with the (n, D) embeddings of its
    recordings (replacing the voiceprint of an entry of that name). Raises UsageError (a bad
    name, no recording), ModelMismatchError, StoreError."""
    name = validated_name(name)
    if len(vectors) == 0:
        raise UsageError(f"no usable recording of {name!r} to put on the watchlist")
    centroid = centroid_of(np.asarray(vectors, dtype=np.float32))
    now = utcnow()

    def work(conn: Connection) -> WatchlistRecord:
        state = lock_state(conn)
        model_id = ensure_model(conn, state, model, store.location.display)
        tenant_id = store.writing_tenant(conn)
        replaced = conn.execute(
            delete(WatchlistEntry).where(
                WatchlistEntry.tenant_id == tenant_id, WatchlistEntry.name == name
            )
        ).rowcount
        record = WatchlistRecord(
            name,
            len(vectors),
            float(sum(speech_seconds)),
            bandwidth_of(speech_seconds, bandwidths),
            now,
        )
        conn.execute(
            insert(WatchlistEntry).values(
                tenant_id=tenant_id,
                name=name,
                centroid=centroid.tobytes(),
                model_id=model_id,
                utterance_count=record.utterances,
                speech_seconds=record.speech_seconds,
                bandwidth_hz=record.bandwidth_hz,
                created_at=now,
            )
        )
        decision = "replaced" if replaced else "added"
        detail = {"name": name, "recordings": record.utterances}
        append(conn, tenant_id, [PendingEntry("watchlist-add", decision=decision, detail=detail)])
        return record

    return store.write(work, "add to the watchlist")


def remove_voice(store: EnrollmentStore, name: str) -> None:
    """Take ``name`` off the tenant's watchlist. Raises NotFoundError, StoreError."""
    name = validated_name(name)

    def work(conn: Connection) -> None:
        lock_state(conn)
        tenant_id = store.tenant_id(conn)
        gone = conn.execute(
            delete(WatchlistEntry).where(
                WatchlistEntry.tenant_id == tenant_id, WatchlistEntry.name == name
            )
        ).rowcount
        if not gone or tenant_id is None:
            raise NotFoundError(f"{name!r} is not on the watchlist")
        entry = PendingEntry("watchlist-remove", decision="removed", detail={"name": name})
        append(conn, tenant_id, [entry])

    store.write(work, "remove from the watchlist")


def watchlist(store: EnrollmentStore) -> list[WatchlistRecord]:
    """The tenant's watchlist, by name."""
    with store.reading("read the watchlist") as conn:
        rows = conn.execute(
            select(
                WatchlistEntry.name,
                WatchlistEntry.utterance_count,
                WatchlistEntry.speech_seconds,
                WatchlistEntry.bandwidth_hz,
                WatchlistEntry.created_at,
            )
            .where(WatchlistEntry.tenant_id == store.tenant_id(conn))
            .order_by(WatchlistEntry.name)
        ).all()
    return [
        WatchlistRecord(
            r.name, r.utterance_count, r.speech_seconds, r.bandwidth_hz, aware(r.created_at)
        )
        for r in rows
    ]


def watched(store: EnrollmentStore) -> list[WatchedVoice]:
    """The tenant's watchlist voices of the database's current model, to score probes
    against (one small read; entries of a model the database no longer holds are left
    out)."""
    with store.reading("read the watchlist") as conn:
        tenant_id = store.tenant_id(conn)
        if tenant_id is None:
            return []
        rows = conn.execute(
            select(
                WatchlistEntry.name,
                WatchlistEntry.centroid,
                WatchlistEntry.utterance_count,
                WatchlistEntry.speech_seconds,
                WatchlistEntry.bandwidth_hz,
            )
            .where(WatchlistEntry.tenant_id == tenant_id)
            .where(WatchlistEntry.model_id == _state_model())
            .order_by(WatchlistEntry.name)
        ).all()
    return [
        WatchedVoice(
            r.name,
            np.frombuffer(r.centroid, dtype=np.float32).copy(),
            r.utterance_count,
            r.speech_seconds,
            r.bandwidth_hz,
        )
        for r in rows
    ]


def _state_model() -> Any:
    return select(StoreState.model_id).where(StoreState.id == 1).scalar_subquery()
