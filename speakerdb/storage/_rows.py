"""Row-level helpers every store module shares: speaker rows and records, the model row and
its guard, the ``store_state`` lock, the change log, centroids.

Each takes the caller's connection inside its transaction; none opens one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, Table, Text, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row

from speakerdb._identity import ModelIdentity
from speakerdb.errors import ModelMismatchError, SpeakerNotFoundError, StoreError
from speakerdb.storage._metadata import read_stored_metadata
from speakerdb.storage._names import lookup_forms
from speakerdb.storage._records import Candidate, SpeakerRecord, UtteranceRecord
from speakerdb.storage._schema import (
    Change,
    ModelRow,
    Speaker,
    StoreState,
    Tenant,
    Utterance,
    utcnow,
)

__all__ = [
    "CANDIDATE_COLUMNS",
    "METADATA_COLUMN",
    "SPEAKER_COLUMNS",
    "AnySelect",
    "StoreSnapshot",
    "aware",
    "bandwidth_of",
    "candidate_of",
    "candidate_rows",
    "centroid_of",
    "change_seq",
    "described",
    "enrolled_hashes",
    "ensure_model",
    "insert_model_row",
    "lock_state",
    "model_mismatch",
    "model_of",
    "record_change",
    "rows_by_name",
    "set_seq",
    "speaker_record",
    "speaker_row",
    "store_snapshot",
    "stored_dimension",
    "table_of",
    "utterance_records",
]

AnySelect: TypeAlias = "Select[*tuple[Any, ...]]"  # a SELECT of any columns

METADATA_COLUMN = Speaker.__table__.c.metadata

SPEAKER_COLUMNS: AnySelect = select(
    Speaker.id,
    Speaker.tenant_id,
    Speaker.name,
    # As text, decoded by read_stored_metadata: one row an earlier release stored unchecked
    # must not break a listing (the JSON type would decode it, or fail, for every row).
    sql_cast(Speaker.metadata_, Text).label("speaker_metadata"),
    Speaker.status,
    Speaker.utterance_count,
    Speaker.speech_seconds,
    Speaker.created_at,
    Speaker.updated_at,
    Speaker.bandwidth_hz,
    Speaker.expires_at,
    Speaker.consent,
    Speaker.consent_at,
    Speaker.consent_by,
)


def table_of(mapped: type[Any]) -> Table:
    """The Core table of a mapped class (typed: ``__table__`` is a FromClause to mypy)."""
    return cast(Table, mapped.__table__)


def aware(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def speaker_record(row: Row[Any]) -> SpeakerRecord:
    metadata, metadata_error = read_stored_metadata(row.speaker_metadata)
    return SpeakerRecord(
        id=row.id,
        name=row.name,
        metadata=metadata,
        metadata_error=metadata_error,
        status=row.status,
        utterances=row.utterance_count,
        speech_seconds=row.speech_seconds,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        bandwidth_hz=row.bandwidth_hz,
        expires_at=aware(row.expires_at) if row.expires_at is not None else None,
        consent=row.consent,
        consent_at=aware(row.consent_at) if row.consent_at is not None else None,
        consent_by=row.consent_by,
    )


def candidate_of(row: Row[Any], score: float) -> Candidate:
    return Candidate(
        row.id, row.name, score, row.utterance_count, row.speech_seconds, row.bandwidth_hz
    )


# What a search answer is made of (and what `db check` compares with the index).
CANDIDATE_COLUMNS = (
    Speaker.id,
    Speaker.name,
    Speaker.centroid,
    Speaker.utterance_count,
    Speaker.speech_seconds,
    Speaker.bandwidth_hz,
)


def candidate_rows(conn: Connection, tenant_id: int, ids: Sequence[int]) -> list[Row[Any]]:
    """The rows (id, name, centroid, utterance_count, speech_seconds, bandwidth_hz) of those
    speakers of ``ids`` that exist and belong to tenant ``tenant_id``, in any order."""
    # Found by primary key alone, the tenant checked on the rows found. Given both conditions
    # at once, PostgreSQL with stale statistics (a bulk enrollment not yet analysed; or no
    # autovacuum) intersects the key lookups with a scan of the tenant index: every id of
    # the tenant, ~7 ms at 100 000 speakers for 50 rows. A MATERIALIZED common table
    # expression is evaluated on its own, so its condition decides its plan alone.
    found = (
        select(*CANDIDATE_COLUMNS, Speaker.tenant_id)
        .where(Speaker.id.in_(ids))
        .cte("wanted")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    rows: Any = conn.execute(
        select(
            found.c.id,
            found.c.name,
            found.c.centroid,
            found.c.utterance_count,
            found.c.speech_seconds,
            found.c.bandwidth_hz,
        ).where(found.c.tenant_id == tenant_id)
    ).all()
    return list(rows)


def bandwidth_of(seconds: Sequence[float], bandwidths: Sequence[float | None]) -> float | None:
    """The voiceprint's bandwidth: its recordings' bandwidths averaged with their speech
    seconds as weights (as speakerdb._calibration.enrollment_quality), None if any is
    unknown or no recording has speech."""
    known = [b for b in bandwidths if b is not None]
    total = float(sum(seconds))
    if not known or len(known) != len(bandwidths) or total <= 0:
        return None
    return float(sum(s * b for s, b in zip(seconds, known, strict=True)) / total)


def speaker_row(
    conn: Connection,
    tenant_id: int | None,
    name: str,
    for_update: bool = False,
    columns: AnySelect | None = None,
) -> Row[Any]:
    """The speaker of tenant ``tenant_id`` called ``name``: stored exactly so, else under
    its canonical form (see :mod:`speakerdb.storage._names`). Raises SpeakerNotFoundError
    (also for a tenant that does not exist, None: the same answer as for an unknown name)."""
    if tenant_id is None:
        raise SpeakerNotFoundError(name)
    forms = lookup_forms(name)
    query = (columns if columns is not None else SPEAKER_COLUMNS).where(
        Speaker.tenant_id == tenant_id, Speaker.name.in_(forms)
    )
    if for_update:
        query = query.with_for_update()
    rows = {row.name: row for row in conn.execute(query).all()}
    for form in forms:
        if form in rows:
            return rows[form]
    raise SpeakerNotFoundError(name)


def rows_by_name(
    conn: Connection, tenant_id: int | None, names: Sequence[str], columns: AnySelect
) -> dict[str, Row[Any]]:
    """The rows (``columns`` must include Speaker.name) of those of ``names`` that exist in
    tenant ``tenant_id``, keyed by the name as given; each looked up like
    :func:`speaker_row`."""
    if tenant_id is None:
        return {}
    forms = {name: lookup_forms(name) for name in names}
    wanted = sorted({form for variants in forms.values() for form in variants})
    rows: dict[str, Row[Any]] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows.update(
            (r.name, r)
            for r in conn.execute(
                columns.where(Speaker.tenant_id == tenant_id, Speaker.name.in_(chunk))
            )
        )
    out: dict[str, Row[Any]] = {}
    for name, variants in forms.items():
        found = next((rows[form] for form in variants if form in rows), None)
        if found is not None:
            out[name] = found
    return out


_MODEL_COLUMNS = (
    ModelRow.name,
    ModelRow.weights_sha256,
    ModelRow.dimension,
    ModelRow.default_threshold,
    ModelRow.family,
    ModelRow.source,
    ModelRow.threshold_note,
)


def _model_from(row: Row[Any]) -> ModelIdentity | None:
    if row.name is None:  # an outer join found no model row
        return None
    return ModelIdentity(
        row.name,
        row.weights_sha256,
        row.dimension,
        row.default_threshold,
        family=row.family or row.name,
        source=row.source,
        threshold_note=row.threshold_note or "",
    )


def model_of(conn: Connection) -> ModelIdentity | None:
    row: Any = conn.execute(
        select(*_MODEL_COLUMNS)
        .join(StoreState, StoreState.model_id == ModelRow.id)
        .where(StoreState.id == 1)
    ).first()
    return None if row is None else _model_from(row)


@dataclass(frozen=True)
class StoreSnapshot:
    """What a read needs to know of the database as a whole, read in one statement (see
    :func:`store_snapshot`): ``change_seq``, the last committed change number; ``model``, the
    model whose vectors it holds (None before the first enrollment); ``tenant_id``, the id of
    the tenant asked about (None when not asked, or never written)."""

    change_seq: int
    model: ModelIdentity | None
    tenant_id: int | None


def store_snapshot(conn: Connection, tenant: str | None = None) -> StoreSnapshot:
    """The change sequence, the model and (``tenant``: a tenant name) that tenant's id, in
    ONE statement: one round trip where a client-server database would take three."""
    columns: list[Any] = [StoreState.change_seq, *_MODEL_COLUMNS]
    if tenant is not None:
        columns.append(
            select(Tenant.id).where(Tenant.name == tenant).scalar_subquery().label("tenant_id")
        )
    row = conn.execute(
        select(*columns)
        .select_from(StoreState)
        .outerjoin(ModelRow, ModelRow.id == StoreState.model_id)
        .where(StoreState.id == 1)
    ).one()
    found = row.tenant_id if tenant is not None else None
    return StoreSnapshot(
        int(row.change_seq), _model_from(row), None if found is None else int(found)
    )


def stored_dimension(conn: Connection) -> int:
    model = model_of(conn)
    if model is None:
        raise StoreError("the database has no voiceprints yet")
    return model.dimension


def described(model: ModelIdentity) -> str:
    where = f" from {model.source}" if model.source else ""
    return f"{model.label} ({model.dimension}-d{where})"


def model_mismatch(where: str, held: ModelIdentity, offered: ModelIdentity) -> ModelMismatchError:
    use = held.source or held.name
    return ModelMismatchError(
        f"{where} holds voiceprints of model {described(held)} but these come from "
        f"{described(offered)}; vectors of two models are never mixed: use --model {use} "
        "with this database (or none: it loads its own), or another database (--db URL)"
    )


def lock_state(conn: Connection) -> Row[int, int | None]:
    """Lock the state row for the rest of the transaction (serialises writers)."""
    return conn.execute(
        select(StoreState.change_seq, StoreState.model_id)
        .where(StoreState.id == 1)
        .with_for_update()
    ).one()


def change_seq(conn: Connection) -> int:
    """The last committed change number, as ``conn`` sees it."""
    return int(conn.execute(select(StoreState.change_seq).where(StoreState.id == 1)).scalar_one())


def set_seq(conn: Connection, seq: int) -> None:
    conn.execute(update(StoreState).where(StoreState.id == 1).values(change_seq=seq))


def insert_model_row(conn: Connection, model: ModelIdentity) -> int:
    """Record ``model`` in the ``models`` table; returns its new id."""
    return int(
        conn.execute(
            table_of(ModelRow)
            .insert()
            .values(
                name=model.name,
                weights_sha256=model.weights_sha256,
                dimension=model.dimension,
                default_threshold=model.default_threshold,
                family=model.family or model.name,
                source=model.source,
                threshold_note=model.threshold_note or None,
                created_at=utcnow(),
            )
            .returning(ModelRow.id)
        ).scalar_one()
    )


def ensure_model(
    conn: Connection, state: Row[int, int | None], model: ModelIdentity, where: str
) -> int:
    """The id of ``model`` in this database, registering it if the database has none yet."""
    if state.model_id is not None:
        held = model_of(conn)
        assert held is not None
        if not held.same_model(model):
            raise model_mismatch(where, held, model)
        return int(state.model_id)
    model_id = conn.execute(
        select(ModelRow.id).where(
            ModelRow.name == model.name, ModelRow.weights_sha256 == model.weights_sha256
        )
    ).scalar()
    if model_id is None:
        model_id = insert_model_row(conn, model)
    conn.execute(update(StoreState).where(StoreState.id == 1).values(model_id=model_id))
    return int(model_id)


def record_change(conn: Connection, speaker_id: int, seq: int, op: str) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(table_of(Change)).values(speaker_id=speaker_id, seq=seq, op=op)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["speaker_id"],
            set_={"seq": statement.excluded.seq, "op": statement.excluded.op},
        )
    )
    if op == "upsert":
        conn.execute(update(Speaker).where(Speaker.id == speaker_id).values(change_seq=seq))


def centroid_of(embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    mean = embeddings.astype(np.float64).mean(axis=0)
    unit: npt.NDArray[np.float32] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return unit


def utterance_records(conn: Connection, speaker_id: int) -> list[UtteranceRecord]:
    """A speaker's utterances (without their vectors), in enrollment order."""
    rows = conn.execute(
        select(
            Utterance.id,
            Utterance.audio_sha256,
            Utterance.source,
            Utterance.duration,
            Utterance.speech_seconds,
            Utterance.created_at,
            Utterance.bandwidth_hz,
        )
        .where(Utterance.speaker_id == speaker_id)
        .order_by(Utterance.id)
    ).all()
    return [
        UtteranceRecord(
            r.id,
            r.audio_sha256,
            r.source,
            r.duration,
            r.speech_seconds,
            aware(r.created_at),
            r.bandwidth_hz,
        )
        for r in rows
    ]


def enrolled_hashes(
    conn: Connection, tenant_id: int | None, names: Sequence[str]
) -> dict[str, set[str]]:
    """sha256 of the audio enrolled per speaker name as given (each looked up like
    :func:`speaker_row`; absent names map to an empty set)."""
    out: dict[str, set[str]] = {n: set() for n in names}
    found = rows_by_name(conn, tenant_id, names, select(Speaker.id, Speaker.name))
    owner: dict[int, list[str]] = {}
    for name, row in found.items():
        owner.setdefault(row.id, []).append(name)
    ids = sorted(owner)
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(Utterance.speaker_id, Utterance.audio_sha256).where(
                Utterance.speaker_id.in_(ids[start : start + 500])
            )
        ).all()
        for r in rows:
            for name in owner[r.speaker_id]:
                out[name].add(r.audio_sha256)
    return out
