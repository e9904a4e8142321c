"""Enrollment inside one write transaction: validating requests before it starts, bulk
insertion of new speakers, the general path for existing ones (append, overwrite, skip,
duplicates, the append check), centroids recomputed from the utterances.

Called by :meth:`speakerdb.storage._store.EnrollmentStore.enroll_many` with the state row
locked; none of these opens a transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from speakerdb.errors import UsageError
from speakerdb.storage._governance import check_consent_text, consent_values
from speakerdb.storage._metadata import validated_metadata
from speakerdb.storage._names import validated_name
from speakerdb.storage._records import (
    ENROLL_MODES,
    AppendCheck,
    EnrollRequest,
    EnrollResult,
    NewUtterance,
    SpeakerRecord,
    vectors_from_bytes,
)
from speakerdb.storage._rows import (
    METADATA_COLUMN,
    SPEAKER_COLUMNS,
    bandwidth_of,
    centroid_of,
    speaker_record,
    speaker_row,
    table_of,
)
from speakerdb.storage._schema import Change, Speaker, Utterance, utcnow

__all__ = [
    "checked_bandwidth",
    "create_speakers",
    "enroll_one",
    "existing_names",
    "split_duplicates",
    "utterance_rows",
    "validated_request",
]


def validated_request(request: EnrollRequest, dimension: int) -> EnrollRequest:
    name = validated_name(request.name)
    if request.mode not in ENROLL_MODES:
        raise UsageError(f"mode must be one of {', '.join(ENROLL_MODES)}, not {request.mode!r}")
    validated_metadata(request.metadata)
    if not request.utterances and request.mode != "skip":
        raise UsageError(f"nothing to enroll for {name!r}: no utterances")
    clean: list[NewUtterance] = []
    for u in request.utterances:
        vector = np.asarray(u.embedding, dtype=np.float32).reshape(-1)
        if vector.shape != (dimension,):
            raise UsageError(f"embedding has shape {vector.shape}, expected ({dimension},)")
        norm = float(np.linalg.norm(vector))
        if not np.all(np.isfinite(vector)) or norm == 0.0:
            raise UsageError("embedding must be finite and non-zero")
        if not (isinstance(u.sha256, str) and len(u.sha256) == 64):
            raise UsageError("utterance sha256 must be 64 hex characters")
        clean.append(
            NewUtterance(
                embedding=(vector / norm).astype(np.float32),
                sha256=u.sha256,
                source=u.source,
                duration=float(u.duration),
                speech_seconds=float(u.speech_seconds),
                bandwidth_hz=checked_bandwidth(u.bandwidth_hz),
            )
        )
    expires_at = request.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        raise UsageError("an expiry time must carry its time zone")
    return EnrollRequest(
        name,
        clean,
        request.mode,
        request.metadata,
        expires_at=expires_at,
        consent=check_consent_text(request.consent),
    )


def checked_bandwidth(value: float | None) -> float | None:
    if value is None:
        return None
    hz = float(value)
    if not (np.isfinite(hz) and hz > 0):
        raise UsageError(f"bandwidth must be positive Hz or unknown (None), not {value!r}")
    return hz


def split_duplicates(
    utterances: list[NewUtterance], known: set[str]
) -> tuple[list[NewUtterance], list[str]]:
    """(utterances to store, sha256 of the duplicates): an utterance is a duplicate when its
    audio is in ``known`` or earlier in the list."""
    seen = set(known)
    added: list[NewUtterance] = []
    duplicates: list[str] = []
    for u in utterances:
        if u.sha256 in seen:
            duplicates.append(u.sha256)
        else:
            seen.add(u.sha256)
            added.append(u)
    return added, duplicates


def utterance_rows(
    speaker_id: int, utterances: list[NewUtterance], model_id: int, now: dt.datetime
) -> list[dict[str, Any]]:
    return [
        {
            "speaker_id": speaker_id,
            "audio_sha256": u.sha256,
            "source": u.source,
            "duration": u.duration,
            "speech_seconds": u.speech_seconds,
            "bandwidth_hz": u.bandwidth_hz,
            "embedding": u.embedding.tobytes(),
            "model_id": model_id,
            "created_at": now,
        }
        for u in utterances
    ]


def existing_names(conn: Connection, tenant_id: int, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    unique = sorted(set(names))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        found.update(
            conn.execute(
                select(Speaker.name).where(Speaker.tenant_id == tenant_id, Speaker.name.in_(chunk))
            ).scalars()
        )
    return found


def create_speakers(
    conn: Connection, tenant_id: int, requests: list[EnrollRequest], model_id: int, seq: int
) -> tuple[list[EnrollResult], int]:
    """Insert new speakers (distinct names, none existing) with their utterances and change
    log entries in bulk statements. Returns their results and the last sequence number used."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    kept: list[tuple[list[NewUtterance], list[str]]] = []
    for request in requests:
        added, duplicates = split_duplicates(request.utterances, set())
        seq += 1
        kept.append((added, duplicates))
        governed = consent_values(request, now)
        rows.append(
            {
                "expires_at": governed.get("expires_at"),
                "consent": governed.get("consent"),
                "consent_at": governed.get("consent_at"),
                "consent_by": governed.get("consent_by"),
                "tenant_id": tenant_id,
                "name": request.name,
                "metadata": request.metadata,
                "status": "active",
                "centroid": centroid_of(np.stack([u.embedding for u in added])).tobytes(),
                "utterance_count": len(added),
                "speech_seconds": float(sum(u.speech_seconds for u in added)),
                "bandwidth_hz": bandwidth_of(
                    [u.speech_seconds for u in added], [u.bandwidth_hz for u in added]
                ),
                "change_seq": seq,
                "created_at": now,
                "updated_at": now,
            }
        )
    ids = (
        conn.execute(
            table_of(Speaker).insert().returning(Speaker.id, sort_by_parameter_order=True), rows
        )
        .scalars()
        .all()
    )
    conn.execute(
        table_of(Utterance).insert(),
        [
            row
            for speaker_id, (added, _) in zip(ids, kept, strict=True)
            for row in utterance_rows(speaker_id, added, model_id, now)
        ],
    )
    # Ids are never reused, so a new speaker has no change-log entry yet.
    conn.execute(
        table_of(Change).insert(),
        [
            {"speaker_id": i, "seq": row["change_seq"], "op": "upsert"}
            for i, row in zip(ids, rows, strict=True)
        ],
    )
    results = [
        EnrollResult(
            row["name"],
            SpeakerRecord(
                id=speaker_id,
                name=row["name"],
                metadata=row["metadata"],
                status="active",
                utterances=row["utterance_count"],
                speech_seconds=row["speech_seconds"],
                created_at=now,
                updated_at=now,
                bandwidth_hz=row["bandwidth_hz"],
                expires_at=row["expires_at"],
                consent=row["consent"],
                consent_at=row["consent_at"],
                consent_by=row["consent_by"],
            ),
            created=True,
            added=[u.sha256 for u in added],
            duplicates=duplicates,
            utterance_hashes=[u.sha256 for u in added],
            utterance_embeddings=np.stack([u.embedding for u in added]),
        )
        for speaker_id, row, (added, duplicates) in zip(ids, rows, kept, strict=True)
    ]
    return results, seq


def enroll_one(
    conn: Connection,
    tenant_id: int,
    request: EnrollRequest,
    model_id: int,
    dimension: int,
    check_append: AppendCheck | None = None,
) -> tuple[EnrollResult, bool]:
    """Apply one enrollment to an EXISTING speaker inside the caller's transaction (new
    speakers go through :func:`create_speakers`); returns (result, centroid changed)."""
    now = utcnow()
    existing = conn.execute(
        SPEAKER_COLUMNS.add_columns(Speaker.centroid)
        .where(Speaker.tenant_id == tenant_id, Speaker.name == request.name)
        .with_for_update()
    ).first()
    if existing is None:
        # Only "skip" with nothing to enroll gets here for an unknown name.
        return EnrollResult(request.name, None, skipped=True), False
    if request.mode == "skip":
        return EnrollResult(request.name, speaker_record(existing), skipped=True), False

    speaker_id = existing.id
    removed = 0
    known: set[str] = set()
    if request.mode == "overwrite":
        removed = conn.execute(delete(Utterance).where(Utterance.speaker_id == speaker_id)).rowcount
    else:
        known = set(
            conn.execute(
                select(Utterance.audio_sha256).where(Utterance.speaker_id == speaker_id)
            ).scalars()
        )
    added, duplicates = split_duplicates(request.utterances, known)
    if added and request.mode == "append" and check_append is not None:
        # Judged against the voiceprint as it stands, before anything of this request.
        before = np.frombuffer(existing.centroid, dtype=np.float32).copy()
        if not check_append(speaker_record(existing), before, added):
            return EnrollResult(
                request.name, speaker_record(existing), duplicates=duplicates, refused=True
            ), False

    governed = consent_values(request, now)
    if not added and removed == 0:
        if request.metadata is not None or governed:
            changes: dict[Any, Any] = {Speaker.updated_at: now}
            if request.metadata is not None:
                changes[METADATA_COLUMN] = request.metadata
            changes.update({getattr(Speaker, k): v for k, v in governed.items()})
            conn.execute(update(Speaker).where(Speaker.id == speaker_id).values(changes))
            existing = speaker_row(conn, tenant_id, request.name)
        return EnrollResult(request.name, speaker_record(existing), duplicates=duplicates), False

    if added:
        conn.execute(table_of(Utterance).insert(), utterance_rows(speaker_id, added, model_id, now))
    rows = conn.execute(
        select(
            Utterance.audio_sha256,
            Utterance.embedding,
            Utterance.speech_seconds,
            Utterance.bandwidth_hz,
        )
        .where(Utterance.speaker_id == speaker_id)
        .order_by(Utterance.id)
    ).all()
    if not rows:
        raise UsageError(f"enrolling {request.name!r} would leave it without utterances")
    embeddings = vectors_from_bytes([r.embedding for r in rows], dimension)
    values: dict[str, Any] = {
        "centroid": centroid_of(embeddings).tobytes(),
        "utterance_count": len(rows),
        "speech_seconds": float(sum(r.speech_seconds for r in rows)),
        "bandwidth_hz": bandwidth_of(
            [r.speech_seconds for r in rows], [r.bandwidth_hz for r in rows]
        ),
        "updated_at": now,
    }
    if request.metadata is not None:
        values["metadata"] = request.metadata
    values.update(governed)
    conn.execute(update(Speaker).where(Speaker.id == speaker_id).values(**values))
    record = speaker_record(speaker_row(conn, tenant_id, request.name))
    return (
        EnrollResult(
            request.name,
            record,
            added=[u.sha256 for u in added],
            duplicates=duplicates,
            removed=removed,
            utterance_hashes=[r.audio_sha256 for r in rows],
            utterance_embeddings=embeddings,
        ),
        True,
    )
