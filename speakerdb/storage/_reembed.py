"""Switching a database to another model: the storage side of ``speakerdb db reembed``.

A switch happens in two stages, so that a run killed at any moment loses nothing and leaves
the database answering with its current model:

1. vectors of the new model are made outside the database and stored in ``reembeddings``
   in short committed batches (:func:`save_vectors`); a rerun asks :func:`pending_recordings`
   and skips every recording that already has one;
2. one transaction (:func:`switch_model`) swaps them into ``utterances``, moving the
   previous model's vectors into ``reembeddings`` (kept until :func:`drop_other_vectors`),
   recomputes every centroid, logs a change for every speaker, points ``store_state`` at
   the new model and resets the calibrations (they were fitted on the old model's scores).

Nothing here imports torch: embeddings arrive as arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Row

from speakerdb._identity import ModelIdentity
from speakerdb.errors import RecordingsMissingError, StoreError, UsageError
from speakerdb.storage._connection import StoreConnection
from speakerdb.storage._records import vectors_from_bytes
from speakerdb.storage._rows import (
    bandwidth_of,
    centroid_of,
    insert_model_row,
    lock_state,
    model_of,
    record_change,
    set_seq,
    table_of,
)
from speakerdb.storage._schema import (
    SPOOF_CALIBRATION_KEY,
    Calibration,
    ModelRow,
    Reembedding,
    Speaker,
    StoreState,
    Utterance,
    utcnow,
)

__all__ = [
    "NewVector",
    "PendingRecording",
    "SwitchResult",
    "drop_other_vectors",
    "other_vector_counts",
    "pending_recordings",
    "register_model",
    "save_vectors",
    "switch_model",
]


@dataclass(frozen=True)
class PendingRecording:
    """An enrolled recording without a vector of the target model yet."""

    utterance_id: int
    speaker: str
    source: str | None
    audio_sha256: str  # as the database's current model decoded it


@dataclass(frozen=True)
class NewVector:
    """A recording's (D,) unit-norm embedding by the target model, and the recording's sha256
    as that model's audio pipeline decodes it."""

    utterance_id: int
    audio_sha256: str
    embedding: npt.NDArray[np.float32]


@dataclass
class SwitchResult:
    """What :func:`switch_model` did. ``lacking``: recordings without a vector of the new
    model that the caller did not expect (enrolled meanwhile): nothing was switched, embed
    them and call again."""

    switched: bool
    previous: ModelIdentity | None = None
    recordings: int = 0
    dropped_recordings: list[tuple[str, str | None]] = field(default_factory=list)
    deleted_speakers: list[str] = field(default_factory=list)
    calibrations_reset: list[str] = field(default_factory=list)
    lacking: list[int] = field(default_factory=list)


def register_model(store: StoreConnection, model: ModelIdentity) -> int:
    """The id of ``model``'s row, inserted if the database has never seen it (the database
    keeps using its own model). A bring-your-own model's path is remembered."""

    def work(conn: Connection) -> int:
        lock_state(conn)
        return _model_row(conn, model)

    return store.write(work, "record the new model")


def _model_row(conn: Connection, model: ModelIdentity) -> int:
    found = conn.execute(
        select(ModelRow.id, ModelRow.dimension).where(
            ModelRow.name == model.name, ModelRow.weights_sha256 == model.weights_sha256
        )
    ).first()
    if found is not None:
        if found.dimension != model.dimension:
            raise StoreError(f"model {model.label} is recorded with another dimension")
        if model.source is not None:
            conn.execute(
                update(ModelRow).where(ModelRow.id == found.id).values(source=model.source)
            )
        return int(found.id)
    return insert_model_row(conn, model)


def pending_recordings(store: StoreConnection, model_id: int) -> tuple[list[PendingRecording], int]:
    """(recordings without a vector of model ``model_id``, in enrollment order; how many
    already have one)."""
    with store.reading("list the recordings to re-embed") as conn:
        done = conn.execute(
            select(func.count())
            .select_from(Reembedding)
            .join(Utterance, Utterance.id == Reembedding.utterance_id)
            .where(Reembedding.model_id == model_id)
        ).scalar_one()
        made = select(Reembedding.utterance_id).where(Reembedding.model_id == model_id)
        rows = conn.execute(
            select(Utterance.id, Speaker.name, Utterance.source, Utterance.audio_sha256)
            .join(Speaker, Speaker.id == Utterance.speaker_id)
            .where(Utterance.id.not_in(made))
            .order_by(Utterance.id)
        ).all()
    return [PendingRecording(r.id, r.name, r.source, r.audio_sha256) for r in rows], int(done)


def save_vectors(
    store: StoreConnection, model_id: int, dimension: int, vectors: Sequence[NewVector]
) -> None:
    """Store vectors of model ``model_id`` in one transaction (the database's own model is
    unaffected). Vectors of recordings deleted meanwhile are left out; one already stored
    is replaced."""
    rows = []
    for v in vectors:
        vector = np.asarray(v.embedding, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        if vector.shape != (dimension,) or not np.all(np.isfinite(vector)) or norm == 0.0:
            raise UsageError(f"a re-embedded vector must be ({dimension},) finite, non-zero")
        rows.append((v.utterance_id, v.audio_sha256, (vector / norm).astype(np.float32)))
    if not rows:
        return

    def work(conn: Connection) -> None:
        ids = [r[0] for r in rows]
        alive = set(conn.execute(select(Utterance.id).where(Utterance.id.in_(ids))).scalars())
        conn.execute(
            delete(Reembedding).where(
                Reembedding.model_id == model_id, Reembedding.utterance_id.in_(ids)
            )
        )
        now = utcnow()
        values = [
            {
                "utterance_id": uid,
                "model_id": model_id,
                "audio_sha256": sha,
                "embedding": vector.tobytes(),
                "created_at": now,
            }
            for uid, sha, vector in rows
            if uid in alive
        ]
        if values:
            conn.execute(table_of(Reembedding).insert(), values)

    store.write(work, "store re-embedded vectors")


def switch_model(
    store: StoreConnection,
    model: ModelIdentity,
    model_id: int,
    *,
    allow_missing: bool,
    expected_missing: Iterable[int] = (),
) -> SwitchResult:
    """Make ``model`` the database's model, in ONE transaction.

    Every recording's vector is replaced by its stored vector of ``model`` (and its
    ``audio_sha256`` by that model's digest); the previous vectors are kept in
    ``reembeddings``. Recordings without a vector of ``model`` listed in
    ``expected_missing`` (gone or changed files) are deleted when ``allow_missing``, and
    speakers left without any recording are deleted too (both are reported); without
    ``allow_missing`` they raise RecordingsMissingError. Any other recording without a
    vector (enrolled since the caller listed them) switches nothing: the result lists them
    in ``lacking``. Every centroid is recomputed and logged as a change (index caches of the
    old model are rebuilt, being of another model), and the calibrations are reset: they
    were fitted on the previous model's scores.
    """
    expected = set(expected_missing)

    def work(conn: Connection) -> SwitchResult:
        state = lock_state(conn)
        previous = model_of(conn)
        if previous is None or state.model_id is None:
            raise UsageError("the database has no voiceprints yet: there is nothing to re-embed")
        old_id = int(state.model_id)
        if old_id == model_id:
            return SwitchResult(False, previous)
        utterances = conn.execute(
            select(
                Utterance.id,
                Utterance.speaker_id,
                Utterance.audio_sha256,
                Utterance.source,
                Utterance.embedding,
            ).order_by(Utterance.id)
        ).all()
        made = {
            r.utterance_id: r
            for r in conn.execute(
                select(
                    Reembedding.utterance_id, Reembedding.audio_sha256, Reembedding.embedding
                ).where(Reembedding.model_id == model_id)
            )
        }
        lacking = [u.id for u in utterances if u.id not in made]
        unexpected = [i for i in lacking if i not in expected]
        if unexpected:
            return SwitchResult(False, previous, lacking=unexpected)
        names = {r.id: r.name for r in conn.execute(select(Speaker.id, Speaker.name))}
        if lacking and not allow_missing:
            raise RecordingsMissingError(
                f"{len(lacking)} recordings have no vector of {model.label}: nothing switched"
            )
        keep = [u for u in utterances if u.id in made]
        dropped = [(names[u.speaker_id], u.source) for u in utterances if u.id not in made]

        # The previous model's vectors go aside (replacing any stale copy), the new come in.
        kept_ids = [u.id for u in keep]
        for start in range(0, len(kept_ids), 500):
            conn.execute(
                delete(Reembedding).where(
                    Reembedding.model_id == old_id,
                    Reembedding.utterance_id.in_(kept_ids[start : start + 500]),
                )
            )
        now = utcnow()
        if keep:
            conn.execute(
                table_of(Reembedding).insert(),
                [
                    {
                        "utterance_id": u.id,
                        "model_id": old_id,
                        "audio_sha256": u.audio_sha256,
                        "embedding": u.embedding,
                        "created_at": now,
                    }
                    for u in keep
                ],
            )
            table = table_of(Utterance)
            conn.execute(
                update(table)
                .where(table.c.id == bindparam("uid"))
                .values(
                    embedding=bindparam("new_embedding"),
                    audio_sha256=bindparam("new_sha256"),
                    model_id=model_id,
                ),
                [
                    {
                        "uid": u.id,
                        "new_embedding": made[u.id].embedding,
                        "new_sha256": made[u.id].audio_sha256,
                    }
                    for u in keep
                ],
            )
        conn.execute(delete(Reembedding).where(Reembedding.model_id == model_id))
        lacking_ids = [u.id for u in utterances if u.id not in made]
        for start in range(0, len(lacking_ids), 500):
            conn.execute(
                delete(Utterance).where(Utterance.id.in_(lacking_ids[start : start + 500]))
            )

        seq = int(state.change_seq)
        deleted = _recompute_speakers(conn, model.dimension, seq)
        seq = deleted[1]
        conn.execute(update(StoreState).where(StoreState.id == 1).values(model_id=model_id))
        set_seq(conn, seq)
        # The spoof calibration belongs to the countermeasure, not to the speaker model.
        speaker_model = Calibration.normalization != SPOOF_CALIBRATION_KEY
        reset = sorted(
            conn.execute(select(Calibration.normalization).where(speaker_model)).scalars()
        )
        conn.execute(delete(Calibration).where(speaker_model))
        return SwitchResult(
            True,
            previous,
            recordings=len(keep),
            dropped_recordings=dropped,
            deleted_speakers=deleted[0],
            calibrations_reset=reset,
        )

    result = store.write(work, f"switch to model {model.label}")
    if result.switched:
        store.forget_model()
    return result


def _recompute_speakers(conn: Connection, dimension: int, seq: int) -> tuple[list[str], int]:
    """Recompute every speaker's centroid, counts, speech seconds and bandwidth from its
    utterances, logging a change for each; delete speakers without any. Returns (names of
    the deleted speakers, last change number used)."""
    speakers = conn.execute(select(Speaker.id, Speaker.name).order_by(Speaker.id)).all()
    rows = conn.execute(
        select(
            Utterance.speaker_id,
            Utterance.embedding,
            Utterance.speech_seconds,
            Utterance.bandwidth_hz,
        ).order_by(Utterance.speaker_id, Utterance.id)
    ).all()
    by_speaker: dict[int, list[Row[int, bytes, float, float | None]]] = {}
    for r in rows:
        by_speaker.setdefault(r.speaker_id, []).append(r)
    deleted: list[str] = []
    now = utcnow()
    for speaker in speakers:
        own = by_speaker.get(speaker.id, [])
        seq += 1
        if not own:
            conn.execute(delete(Speaker).where(Speaker.id == speaker.id))
            record_change(conn, speaker.id, seq, "delete")
            deleted.append(speaker.name)
            continue
        embeddings = vectors_from_bytes([r.embedding for r in own], dimension)
        seconds = [float(r.speech_seconds) for r in own]
        conn.execute(
            update(Speaker)
            .where(Speaker.id == speaker.id)
            .values(
                centroid=centroid_of(embeddings).tobytes(),
                utterance_count=len(own),
                speech_seconds=float(sum(seconds)),
                bandwidth_hz=bandwidth_of(seconds, [r.bandwidth_hz for r in own]),
                updated_at=now,
            )
        )
        record_change(conn, speaker.id, seq, "upsert")
    return deleted, seq


def other_vector_counts(store: StoreConnection) -> dict[str, int]:
    """How many vectors ``reembeddings`` holds per model label (models other than the
    database's own: the previous model's after a switch, a target's before it)."""
    with store.reading("count the other models' vectors") as conn:
        rows = conn.execute(
            select(ModelRow.name, ModelRow.weights_sha256, func.count())
            .join(Reembedding, Reembedding.model_id == ModelRow.id)
            .group_by(ModelRow.name, ModelRow.weights_sha256)
        ).all()
    return {f"{name}:{sha[:12]}": int(n) for name, sha, n in rows}


def drop_other_vectors(store: StoreConnection) -> int:
    """Delete every vector of a model other than the database's own (after a switch: the
    previous model's; before one: those a re-embedding made so far). Returns how many.
    SQLite zeroes the freed pages (``secure_delete``) and its log is truncated here;
    PostgreSQL keeps old row versions in its files until ``speakerdb db compact``."""

    def work(conn: Connection) -> int:
        state = lock_state(conn)
        query = delete(Reembedding)
        if state.model_id is not None:
            query = query.where(Reembedding.model_id != state.model_id)
        return int(conn.execute(query).rowcount or 0)

    count = store.write(work, "drop the other models' vectors")
    store.erase_traces()
    return count
