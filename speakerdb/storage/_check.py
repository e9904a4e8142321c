"""``speakerdb db check``: verify a database's invariants and its index cache against SQL.

Checked in SQL (one snapshot): every speaker has utterances; counts and speech seconds match
them; each centroid is the normalised mean of its utterance embeddings; every embedding is
finite, unit-norm, of the right size and of the database's model; the change log covers every
speaker, has no entry newer than the counter, and marks deleted speakers deleted.

Checked for the index: the cache file as it is on disk must not hold the voiceprint of any
speaker that no longer exists (a deleted speaker's biometric data must not survive in a
cache, even one that catching up would correct), nor may any other cache file of the same
database found on this machine (another URL spelling's, another cache folder's, a moved
SQLite file's: see :mod:`speakerdb.storage._cache_files`); then it is loaded as a fresh
process would load it (not this process's copy), caught up from the change log, and
compared with SQL: the same speaker ids and the same vectors to 1e-6.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from speakerdb.storage._engine import read_transaction
from speakerdb.storage._index_cache import IndexCache, read_file_as_stored
from speakerdb.storage._migrate import schema_status
from speakerdb.storage._records import vectors_from_bytes
from speakerdb.storage._rows import CANDIDATE_COLUMNS, change_seq, model_of
from speakerdb.storage._schema import Change, Reembedding, Speaker, StoreState, Utterance
from speakerdb.storage._store import EnrollmentStore

__all__ = ["CheckReport", "check_store"]

VECTOR_TOLERANCE = 1e-6
CENTROID_TOLERANCE = 1e-5
NORM_TOLERANCE = 1e-3
_MAX_LISTED = 20


@dataclass
class CheckReport:
    consistent: bool
    speakers: int
    utterances: int
    revision: str | None
    head_revision: str
    model: dict[str, Any] | None
    change_seq: int
    index: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_store(store: EnrollmentStore, attempts: int = 3) -> CheckReport:
    """Check ``store``. A writer committing during the check can make the index comparison
    race with the SQL snapshot; the comparison is then repeated (``attempts`` times)."""
    report = _check_sql(store)
    if report.model is None:
        report.index = {"state": "empty database: no index"}
        report.consistent = not report.problems
        return report
    model = _model_from(report.model)
    leftover = _deleted_in_file(store, attempts)
    if leftover:
        report.problems.append(
            f"the index file holds voiceprints of {len(leftover)} deleted speakers (ids "
            f"{leftover[:_MAX_LISTED]}): run `speakerdb db rebuild-index`"
        )
    others = _other_files(store, model)
    for path, deleted in others.items():
        if deleted:
            report.problems.append(
                f"another index cache of this database, {path}, holds voiceprints of "
                f"{len(deleted)} deleted speakers (ids {deleted[:_MAX_LISTED]}): run "
                "`speakerdb db rebuild-index` (it erases the other caches)"
            )
    for _ in range(attempts):
        cache = IndexCache(
            store.engine,
            store.location.index_path,
            store.instance_id,
            model,
            store.index_key,
            store.index_kind(),
            database=store.database_identity,
        )
        ids, vectors = cache.index().contents()
        with read_transaction(store.engine) as conn:
            seq = change_seq(conn)
            rows = conn.execute(select(Speaker.id, Speaker.centroid).order_by(Speaker.id)).all()
        if seq == cache.applied_seq:
            break
    status = cache.status()
    report.index = {
        "path": status.path,
        "file": status.file_state,
        "file_seq": status.file_seq,
        "applied_seq": status.applied_seq,
        "vectors": status.vectors,
        "kind": status.params,
        "other_files": sorted(str(p) for p in others),
    }
    sql_ids = np.array([r.id for r in rows], dtype=np.int64)
    # A quantised index (ivfsq) is compared with what SQL's centroids become once quantised.
    sql_vectors = cache.index().stored_form(
        vectors_from_bytes([r.centroid for r in rows], model.dimension)
    )
    if not np.array_equal(ids, sql_ids):
        extra = sorted(set(ids.tolist()) - set(sql_ids.tolist()))
        missing = sorted(set(sql_ids.tolist()) - set(ids.tolist()))
        report.problems.append(
            f"index ids differ from SQL: {len(extra)} extra {extra[:_MAX_LISTED]}, "
            f"{len(missing)} missing {missing[:_MAX_LISTED]}"
        )
    elif len(ids):
        worst = float(np.max(np.abs(vectors - sql_vectors)))
        if worst > VECTOR_TOLERANCE:
            bad = np.nonzero(np.max(np.abs(vectors - sql_vectors), axis=1) > VECTOR_TOLERANCE)[0]
            report.problems.append(
                f"index vectors differ from SQL centroids for {len(bad)} speakers "
                f"(max difference {worst:.2e}), ids {sql_ids[bad][:_MAX_LISTED].tolist()}"
            )
    report.consistent = not report.problems
    return report


def _deleted_in_file(store: EnrollmentStore, attempts: int) -> list[int]:
    """Ids in the index file, as it is on disk, of speakers SQL no longer has. A delete
    committing during the check rewrites the file right after: such an id is only reported
    if it is still there on a second look."""
    leftover: list[int] = []
    for _ in range(attempts):
        stored = store.stored_index()
        if isinstance(stored, str):
            return []  # missing or unusable: nothing to compare (the state is reported)
        file_ids = set(stored.index.contents()[0].tolist())
        with read_transaction(store.engine) as conn:
            existing = set(conn.execute(select(Speaker.id)).scalars())
        leftover = sorted(file_ids - existing)
        if not leftover:
            return []
    return leftover


def _other_files(store: EnrollmentStore, model: Any) -> dict[Path, list[int]]:
    """Every other index cache of this database found on this machine (see
    :mod:`speakerdb.storage._cache_files`), with the ids it holds of speakers SQL no longer
    has (empty when none, or when the file cannot be read as an index of this database:
    then there is nothing to compare)."""
    out: dict[Path, list[int]] = {}
    for path in store.other_cache_files():
        stored = read_file_as_stored(store.engine, path, store.instance_id, model, store.index_key)
        if isinstance(stored, str):
            out[path] = []
            continue
        file_ids = set(stored.index.contents()[0].tolist())
        with read_transaction(store.engine) as conn:
            existing = set(conn.execute(select(Speaker.id)).scalars())
        out[path] = sorted(file_ids - existing)
    return out


def _model_from(fields: dict[str, Any]) -> Any:
    from speakerdb._identity import ModelIdentity

    return ModelIdentity(
        fields["name"], fields["weights_sha256"], fields["dimension"], fields["default_threshold"]
    )


def _same_bandwidth(stored: float | None, rows: list[Any]) -> bool:
    """Whether a speaker's bandwidth is its recordings' speech-weighted mean (None when any
    recording's is unknown)."""
    seconds = [float(r.speech_seconds) for r in rows]
    if any(r.bandwidth_hz is None for r in rows) or sum(seconds) <= 0:
        return stored is None
    expected = sum(s * float(r.bandwidth_hz) for s, r in zip(seconds, rows, strict=True))
    expected /= sum(seconds)
    return stored is not None and abs(stored - expected) <= 1e-6 * max(1.0, expected)


def _check_sql(store: EnrollmentStore) -> CheckReport:
    problems: list[str] = []
    with read_transaction(store.engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        status = schema_status(conn)
        state = conn.execute(
            select(StoreState.change_seq, StoreState.model_id).where(StoreState.id == 1)
        ).one()
        model = model_of(conn)
        speakers = conn.execute(
            select(*CANDIDATE_COLUMNS, Speaker.change_seq).order_by(Speaker.id)
        ).all()
        utterances = conn.execute(
            select(
                Utterance.speaker_id,
                Utterance.embedding,
                Utterance.model_id,
                Utterance.speech_seconds,
                Utterance.bandwidth_hz,
            ).order_by(Utterance.speaker_id, Utterance.id)
        ).all()
        changes = {r.speaker_id: r for r in conn.execute(select(Change)).all()}
        own_aside = conn.execute(
            select(func.count())
            .select_from(Reembedding)
            .where(Reembedding.model_id == state.model_id)
        ).scalar_one()

    change_seq = int(state.change_seq)
    if model is None and (speakers or utterances):
        problems.append("speakers or utterances exist but no model is recorded")
    dimension = model.dimension if model else 0
    by_speaker: dict[int, list[Any]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker_id, []).append(u)
    speaker_ids = {s.id for s in speakers}
    orphans = set(by_speaker) - speaker_ids
    if orphans:
        problems.append(f"utterances of unknown speakers: {sorted(orphans)[:_MAX_LISTED]}")

    listed: dict[str, list[str]] = {}

    def note(kind: str, name: str) -> None:
        listed.setdefault(kind, []).append(name)

    for s in speakers:
        rows = by_speaker.get(s.id, [])
        if not rows:
            note("speakers without utterances", s.name)
            continue
        if s.utterance_count != len(rows):
            note("utterance counts out of date", s.name)
        if abs(s.speech_seconds - sum(r.speech_seconds for r in rows)) > 1e-3 * max(
            1.0, s.speech_seconds
        ):
            note("speech seconds out of date", s.name)
        if not _same_bandwidth(s.bandwidth_hz, rows):
            note("bandwidths out of date", s.name)
        if model is None:
            continue
        if any(len(r.embedding) != 4 * dimension for r in rows) or len(s.centroid) != 4 * dimension:
            note("vectors of the wrong size", s.name)
            continue
        if any(r.model_id != state.model_id for r in rows):
            note("embeddings of another model", s.name)
        embeddings = vectors_from_bytes([r.embedding for r in rows], dimension)
        norms = np.linalg.norm(embeddings, axis=1)
        if not np.all(np.isfinite(embeddings)) or np.any(np.abs(norms - 1) > NORM_TOLERANCE):
            note("embeddings not finite and unit-norm", s.name)
            continue
        mean = embeddings.astype(np.float64).mean(axis=0)
        expected = mean / np.linalg.norm(mean)
        centroid = np.frombuffer(s.centroid, dtype=np.float32)
        if float(np.max(np.abs(centroid - expected))) > CENTROID_TOLERANCE:
            note("centroids not the mean of their utterances", s.name)
        change = changes.get(s.id)
        if change is None or change.op != "upsert" or change.seq != s.change_seq:
            note("speakers missing from the change log", s.name)
    for kind, names in listed.items():
        problems.append(f"{kind}: {len(names)} ({', '.join(map(repr, names[:_MAX_LISTED]))})")
    for change in changes.values():
        if change.seq > change_seq:
            problems.append(f"change log entry {change.seq} is newer than the counter {change_seq}")
            break
    if own_aside:
        problems.append(
            f"{own_aside} vectors of the database's own model are kept aside as another "
            "model's (reembeddings)"
        )
    stale_deletes = [i for i, c in changes.items() if c.op == "delete" and i in speaker_ids]
    if stale_deletes:
        problems.append(
            f"speakers marked deleted in the change log still exist: {stale_deletes[:_MAX_LISTED]}"
        )
    ghost_upserts = [i for i, c in changes.items() if c.op == "upsert" and i not in speaker_ids]
    if ghost_upserts:
        problems.append(
            f"change log upserts of speakers that do not exist: {ghost_upserts[:_MAX_LISTED]}"
        )

    return CheckReport(
        consistent=False,
        speakers=len(speakers),
        utterances=len(utterances),
        revision=status.current,
        head_revision=status.head,
        model=(
            {
                "name": model.name,
                "weights_sha256": model.weights_sha256,
                "dimension": model.dimension,
                "default_threshold": model.default_threshold,
                "label": model.label,
            }
            if model
            else None
        ),
        change_seq=change_seq,
        problems=problems,
    )
