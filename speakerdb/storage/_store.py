"""The enrollment store: speakers and their voiceprints in SQL, centroids in a vector index.

Every write is one short SQL transaction that starts by locking the single ``store_state``
row. That lock serialises writers (SQLite serialises them anyway), fixes the order in which
change numbers become visible, and makes the model check and first-model registration atomic.
Embeddings are computed before the transaction, never inside it.

Guarantees: an enrollment either commits whole or leaves no trace; a speaker never exists
without utterances; its centroid always equals the normalised mean of its utterance embeddings;
the index each process searches equals SQL as of the moment it was caught up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from speakerdb._identity import ModelIdentity
from speakerdb.errors import AlreadyExistsError, StoreError, UsageError
from speakerdb.storage import _keys
from speakerdb.storage._audit import PendingEntry, append, enroll_entry
from speakerdb.storage._cache_files import database_identity, placed
from speakerdb.storage._calibration_rows import (
    check_setting,
    clear_setting,
    read_setting,
    read_threshold,
    write_setting,
)
from speakerdb.storage._compaction import compact_postgresql, compact_sqlite
from speakerdb.storage._engine import create_database_engine, read_transaction, store_error
from speakerdb.storage._enroll_rows import (
    create_speakers,
    enroll_one,
    existing_names,
    validated_request,
)
from speakerdb.storage._governance import check_enrollable, erase_speaker, with_default_retention
from speakerdb.storage._governance_store import GovernedStore
from speakerdb.storage._location import resolve_location
from speakerdb.storage._metadata import validated_metadata
from speakerdb.storage._migrate import ensure_schema, inspect_read_only
from speakerdb.storage._names import validated_name
from speakerdb.storage._records import (
    AppendCheck,
    CalibrationSetting,
    Candidate,
    CompactResult,
    EnrollRequest,
    EnrollResult,
    SpeakerRecord,
    UtteranceRecord,
    vectors_from_bytes,
)
from speakerdb.storage._rows import (
    METADATA_COLUMN,
    SPEAKER_COLUMNS,
    candidate_of,
    candidate_rows,
    enrolled_hashes,
    ensure_model,
    lock_state,
    record_change,
    rows_by_name,
    set_seq,
    speaker_record,
    speaker_row,
    stored_dimension,
    utterance_records,
)
from speakerdb.storage._schema import Speaker, StoreState, Utterance, utcnow
from speakerdb.storage._tenant_ids import tenant_speaker_ids
from speakerdb.storage._tenants import DEFAULT_TENANT, validated_tenant

if TYPE_CHECKING:
    from speakerdb.storage._index_cache import IndexStatus
    from speakerdb.storage._index_file import IndexFile
    from speakerdb.storage._keys import ApiKeyRecord, NewApiKey

__all__ = ["EnrollmentStore", "validated_name"]


class EnrollmentStore(GovernedStore):
    """One database: open it with :meth:`open`, close it (or use ``with``) when done.

    Safe to share between threads. Several processes and machines may use one database at
    once; each keeps its own index cache and stays correct.
    """

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: Any = None,
        device: str | None = None,
        *,
        read_only: bool = False,
        background_index: bool = False,
        tenant: str | None = None,
    ) -> EnrollmentStore:
        """Open the database at ``url`` (see
        :func:`speakerdb.storage._location.resolve_location`), creating it at the current
        schema when it does not exist or is empty. ``device``: "cuda" or "cuda:N" keeps the
        vector index on that GPU when FAISS has GPU support (faiss-gpu), otherwise it stays
        on the CPU.

        ``read_only``: never create or change the database (no file, no schema, no
        migration, no row; writes raise UsageError). The index cache file, which holds
        nothing SQL does not, is still refreshed when its folder is writable.

        ``background_index``: for a long-running process (a server). Index maintenance --
        the switch from exact to IVF search as the database grows, retraining the lists --
        runs in a background thread while queries are answered from the current index
        (kept caught up), which is swapped for the new one when it is ready. Without it, the
        query that first sees the new size does the rebuild (seconds at 100 000 speakers).

        ``tenant``: the tenant every verb acts in (default ``default``; see
        :meth:`in_tenant` for others on the same connections).

        Raises ConfigurationError for a bad URL, DatabaseNotFoundError (read-only) when
        there is no database, NotASpeakerDBError when it holds another application's data
        (left untouched), StoreError when it cannot be reached, SchemaOutOfDateError when it
        needs ``speakerdb db upgrade``.
        """
        location = resolve_location(url)
        tenant_name = validated_tenant(tenant) if tenant is not None else DEFAULT_TENANT
        path = location.sqlite_path
        known = None
        if path is not None and path.exists() and not read_only:
            # Classified through a read-only connection first: another application's file
            # must not even be switched to WAL mode or chmod'ed.
            known = inspect_read_only(location)
        engine = create_database_engine(location, read_only=read_only)
        try:
            ensure_schema(engine, location.display, read_only=read_only, known=known)
            with read_transaction(engine) as conn:
                state = conn.execute(
                    select(StoreState.instance_id, StoreState.index_key).where(StoreState.id == 1)
                ).one()
            identity = database_identity(engine, location, state.instance_id)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise store_error(exc, f"cannot open {location.display}") from None
        except OSError as exc:
            engine.dispose()
            raise StoreError(f"cannot open {location.display}: {exc.strerror or exc}") from None
        except BaseException:
            engine.dispose()
            raise
        store = cls(
            placed(location, identity),
            engine,
            state.instance_id,
            bytes.fromhex(state.index_key),
            device,
            read_only=read_only,
            background_index=background_index,
            database_identity=identity,
        )
        if tenant_name != DEFAULT_TENANT:
            store.tenant, store._tenant_id = tenant_name, None
        return store

    def __enter__(self) -> EnrollmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- settings -----------------------------------------------------------------------------

    def threshold(self, normalization: str | None = None) -> tuple[float | None, str | None]:
        """The threshold on the score scale calibrated on this database for a score
        normalisation (None: raw cosine), and the note on how it was chosen; (None, None)
        when none is set. With a calibration to LLRs it is the threshold for the answers the
        calibration cannot take."""
        with self.reading("read the threshold") as conn:
            return read_threshold(conn, self.tenant_id(conn), normalization or "none")

    def set_threshold(
        self, threshold: float | None, note: str | None = None, normalization: str | None = None
    ) -> None:
        """Store (or with None, clear) this database's threshold on the score scale for a
        normalisation: it replaces whatever decided for that normalisation before."""
        if threshold is None:
            self.clear_calibration(normalization)
            return
        self.set_calibration(
            CalibrationSetting(
                normalization or "none", "threshold", threshold=float(threshold), note=note
            )
        )

    def calibration_setting(
        self, normalization: str | None = None
    ) -> tuple[str, CalibrationSetting | None]:
        """How this database decides for a normalisation (None: raw cosine): the calibration
        that applies where nothing is set ("bundled" or "none", see
        :attr:`speakerdb.storage._schema.StoreState.calibration_default`), and the setting
        stored for that normalisation, if any. One read transaction."""
        with self.reading("read the calibration") as conn:
            return read_setting(conn, self.tenant_id(conn), normalization or "none")

    def set_calibration(self, setting: CalibrationSetting) -> None:
        """Store how this database decides for ``setting.normalization``, replacing what was
        there. A calibration to LLRs also opts the database in for good: from then on a
        normalisation without a setting uses the bundled calibration (``calibrate --reset``
        returns there). Raises UsageError for a malformed setting."""
        check_setting(setting)
        entry = PendingEntry(
            "calibration",
            decision="set",
            detail={
                "normalization": setting.normalization,
                "kind": setting.kind,
                "source": setting.source,
                "threshold": setting.threshold,
            },
        )

        def work(conn: Connection) -> None:
            tenant_id = self.writing_tenant(conn)
            write_setting(conn, tenant_id, setting)
            append(conn, tenant_id, [entry])

        self.write(work, "store the calibration")

    def clear_calibration(self, normalization: str | None = None) -> None:
        """Forget this database's setting for a normalisation: the default applies again."""
        key = normalization or "none"
        entry = PendingEntry("calibration", decision="reset", detail={"normalization": key})

        def work(conn: Connection) -> None:
            tenant_id = self.writing_tenant(conn)
            clear_setting(conn, tenant_id, key)
            append(conn, tenant_id, [entry])

        self.write(work, "reset the calibration")

    # --- writes -------------------------------------------------------------------------------

    def enroll(
        self,
        request: EnrollRequest,
        model: ModelIdentity,
        check_append: AppendCheck | None = None,
    ) -> EnrollResult:
        """Enroll one speaker (see :meth:`enroll_many`)."""
        return self.enroll_many([request], model, check_append)[0]

    def enroll_many(
        self,
        requests: Sequence[EnrollRequest],
        model: ModelIdentity,
        check_append: AppendCheck | None = None,
    ) -> list[EnrollResult]:
        """Enroll several speakers in ONE transaction: all of it commits, or none of it.

        Each request's utterances are (D,) embeddings of ``model``. Modes: "append" adds to an
        existing speaker (creating it if new); "overwrite" replaces its utterances; "skip"
        leaves an existing speaker untouched. Utterances whose sha256 the speaker already has
        are reported as duplicates and not stored twice. ``check_append``: decides, with the
        speaker's row locked, each append of new recordings to an existing speaker (see
        :data:`~speakerdb.storage._records.AppendCheck`); a refused request stores nothing
        and comes back with ``refused`` set, the others go ahead.

        Raises UsageError for bad names, modes, metadata or vectors (before touching the
        database), ModelMismatchError when the database holds another model's vectors.
        """
        requests_in = [validated_request(r, model.dimension) for r in requests]

        def work(conn: Connection) -> list[EnrollResult]:
            state = lock_state(conn)
            model_id = ensure_model(conn, state, model, self.location.display)
            tenant_id = self.writing_tenant(conn)
            seq = int(state.change_seq)
            results: dict[int, EnrollResult] = {}
            # New speakers (the common case of a large enrollment) go in with a few bulk
            # statements; existing or repeated names take the general path afterwards.
            existing = existing_names(conn, tenant_id, [r.name for r in requests_in])
            check_enrollable(conn, tenant_id, requests_in, existing)
            prepared = with_default_retention(conn, tenant_id, requests_in, existing, utcnow())
            fresh: dict[str, int] = {}
            for i, request in enumerate(prepared):
                if (
                    request.name not in existing
                    and request.name not in fresh
                    and request.utterances
                ):
                    fresh[request.name] = i
            if fresh:
                created, seq = create_speakers(
                    conn, tenant_id, [prepared[i] for i in fresh.values()], model_id, seq
                )
                results.update(zip(fresh.values(), created, strict=True))
            for i in sorted(
                set(range(len(prepared))) - set(results), key=lambda i: prepared[i].name
            ):
                result, changed = enroll_one(
                    conn, tenant_id, prepared[i], model_id, model.dimension, check_append
                )
                if changed and result.speaker is not None:
                    seq += 1
                    record_change(conn, result.speaker.id, seq, "upsert")
                results[i] = result
            set_seq(conn, seq)
            ordered = [results[i] for i in range(len(prepared))]
            append(
                conn,
                tenant_id,
                [enroll_entry(r, q.mode) for r, q in zip(ordered, prepared, strict=True)],
            )
            return ordered

        return self.write(work, "enroll")

    def delete_speaker(self, name: str) -> SpeakerRecord:
        """Delete a speaker, its utterances and embeddings; its vector leaves every index at
        the next catch-up. Raises SpeakerNotFoundError."""

        def work(conn: Connection) -> SpeakerRecord:
            state = lock_state(conn)
            tenant_id = self.tenant_id(conn)
            row = speaker_row(conn, tenant_id, name, for_update=True)
            record = speaker_record(row)
            seq = int(state.change_seq) + 1
            erase_speaker(conn, row.id, seq)
            set_seq(conn, seq)
            entry = PendingEntry("delete", speaker=record.name, decision="deleted")
            append(conn, row.tenant_id, [entry])
            return record

        record = self.write(work, f"delete {name!r}")
        self.erase_traces()
        return record

    def compact(self) -> CompactResult:
        """Erase the bytes of deleted voiceprints from the database files and give the space
        back: PostgreSQL keeps deleted rows in the table files (dead tuples) until they are
        rewritten, whatever VACUUM and CHECKPOINT do, so this runs VACUUM FULL on the tables
        holding vectors (it locks them exclusively while it runs: writers and readers wait);
        SQLite already zeroes freed pages (``secure_delete``), VACUUM also shrinks the file.
        The index caches are files too: this process's is rewritten from SQL, every other
        one of this database on this machine erased (see :meth:`erase_traces`).
        Raises UsageError when opened read-only, StoreError."""
        if self.read_only:
            raise UsageError(f"cannot compact {self.location.display}: opened read-only")
        try:
            if self.location.sqlite_path is not None:
                result = compact_sqlite(
                    self._engine, self.location.sqlite_path, self.location.display
                )
            elif self._engine.dialect.name == "postgresql":
                result = compact_postgresql(self._engine, self.location.display)
            else:
                return CompactResult(self.location.display, 0, 0)  # in-memory: nothing on disk
        except SQLAlchemyError as exc:
            raise store_error(exc, f"cannot compact {self.location.display}") from None
        # The caches are files too: this one rewritten from SQL, the others erased.
        self.erase_traces()
        return result

    def rename_speaker(self, old: str, new: str) -> SpeakerRecord:
        """Rename; the voiceprint is untouched. Raises SpeakerNotFoundError,
        AlreadyExistsError, UsageError (an invalid new name)."""
        new = validated_name(new)

        def work(conn: Connection) -> SpeakerRecord:
            lock_state(conn)
            tenant_id = self.tenant_id(conn)
            row = speaker_row(conn, tenant_id, old, for_update=True)
            taken = conn.execute(
                select(Speaker.id).where(Speaker.tenant_id == row.tenant_id, Speaker.name == new)
            ).scalar()
            if taken is not None and taken != row.id:
                raise AlreadyExistsError(f"a speaker named {new!r} already exists")
            conn.execute(
                update(Speaker).where(Speaker.id == row.id).values(name=new, updated_at=utcnow())
            )
            append(
                conn,
                row.tenant_id,
                [
                    PendingEntry(
                        "rename", speaker=row.name, decision="renamed", detail={"new_name": new}
                    )
                ],
            )
            return speaker_record(speaker_row(conn, row.tenant_id, new))

        return self.write(work, f"rename {old!r}")

    def set_metadata(self, name: str, metadata: dict[str, Any] | None) -> SpeakerRecord:
        """Replace a speaker's metadata (None clears it)."""
        validated_metadata(metadata)

        def work(conn: Connection) -> SpeakerRecord:
            lock_state(conn)
            tenant_id = self.tenant_id(conn)
            row = speaker_row(conn, tenant_id, name, for_update=True)
            conn.execute(
                update(Speaker)
                .where(Speaker.id == row.id)
                .values({METADATA_COLUMN: metadata, Speaker.updated_at: utcnow()})
            )
            return speaker_record(speaker_row(conn, tenant_id, row.name))

        return self.write(work, f"update {name!r}")

    # --- reads --------------------------------------------------------------------------------

    def speaker(self, name: str) -> SpeakerRecord:
        with self.reading(f"read {name!r}") as conn:
            return speaker_record(speaker_row(conn, self.tenant_id(conn), name))

    def speaker_records(self, names: Sequence[str]) -> dict[str, SpeakerRecord]:
        """The records of those of ``names`` that exist, keyed by the names as given (each
        looked up like :meth:`speaker`)."""
        with self.reading("read speakers") as conn:
            rows = rows_by_name(conn, self.tenant_id(conn), names, SPEAKER_COLUMNS)
        return {name: speaker_record(row) for name, row in rows.items()}

    def speakers(self) -> list[SpeakerRecord]:
        with self.reading("list speakers") as conn:
            tenant_id = self.tenant_id(conn)
            if tenant_id is None:
                return []
            rows = conn.execute(
                SPEAKER_COLUMNS.where(Speaker.tenant_id == tenant_id).order_by(Speaker.name)
            ).all()
        return [speaker_record(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(speakers, utterances) of this tenant."""
        with self.reading("count speakers") as conn:
            tenant_id = self.tenant_id(conn)
            speakers = conn.execute(
                select(func.count()).select_from(Speaker).where(Speaker.tenant_id == tenant_id)
            ).scalar_one()
            utterances = conn.execute(
                select(func.count())
                .select_from(Utterance)
                .join(Speaker, Speaker.id == Utterance.speaker_id)
                .where(Speaker.tenant_id == tenant_id)
            ).scalar_one()
        return int(speakers), int(utterances)

    def utterances(self, name: str) -> list[UtteranceRecord]:
        with self.reading(f"read {name!r}") as conn:
            return utterance_records(conn, speaker_row(conn, self.tenant_id(conn), name).id)

    def utterance_embeddings(self, name: str) -> npt.NDArray[np.float32]:
        """(n, D) embeddings of a speaker's utterances, in enrollment order."""
        with self.reading(f"read {name!r}") as conn:
            row = speaker_row(conn, self.tenant_id(conn), name)
            dimension = stored_dimension(conn)
            blobs = (
                conn.execute(
                    select(Utterance.embedding)
                    .where(Utterance.speaker_id == row.id)
                    .order_by(Utterance.id)
                )
                .scalars()
                .all()
            )
        return vectors_from_bytes(list(blobs), dimension)

    def existing_hashes(self, names: Sequence[str]) -> dict[str, set[str]]:
        """sha256 of the audio already enrolled, per speaker name as given (looked up like
        :meth:`speaker`; absent names map to an empty set)."""
        if not names:
            return {}
        with self.reading("read enrolled audio") as conn:
            return enrolled_hashes(conn, self.tenant_id(conn), names)

    def centroid(self, name: str) -> tuple[SpeakerRecord, npt.NDArray[np.float32]]:
        """A speaker and its voiceprint: the (D,) unit-norm centroid, read from SQL."""
        with self.reading(f"read {name!r}") as conn:
            self.ensure_current_model(conn)
            row = speaker_row(
                conn,
                self.tenant_id(conn),
                name,
                columns=SPEAKER_COLUMNS.add_columns(Speaker.centroid),
            )
            vector = np.frombuffer(row.centroid, dtype=np.float32).copy()
        return speaker_record(row), vector

    # --- index --------------------------------------------------------------------------------

    def search(self, queries: npt.ArrayLike, k: int, model: ModelIdentity) -> list[list[Candidate]]:
        """The ``k`` enrolled speakers closest to each query, best first, with exact cosine
        scores. queries: (m, D) or (D,) vectors of ``model``. An empty database gives empty
        lists."""
        if k < 1:
            raise UsageError(f"top-k must be at least 1, not {k}")
        q = np.asarray(queries, dtype=np.float32)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if self.model() is None:
            return [[] for _ in range(len(q))]
        self.check_model(model)
        if q.shape[1] != model.dimension:
            raise UsageError(
                f"query vectors have dimension {q.shape[1]}, expected {model.dimension}"
            )
        cache = self._index_cache()
        # One read: catch up with the change log, search, fetch the candidates' full
        # centroids (one query) and re-score them exactly: approximate kinds shortlist more
        # candidates than k so ordering errors (and ivfsq's quantised scores) vanish.
        # The index is shared by every tenant: the search is restricted to this tenant's ids
        # (no restriction when they are all it holds), and SQL checks each candidate's
        # tenant again before anything of it is read.
        # Two statements when nothing changed since the last search (a round trip each to a
        # database server): the snapshot (model check, change sequence, tenant id) and the
        # candidates' rows. The change sequence the snapshot read is the one the index
        # catches up to and the one the tenant's cached ids are checked against.
        # No snapshot shared by the statements is needed (on PostgreSQL they run outside a
        # transaction; at its READ COMMITTED they never shared one): the snapshot statement
        # runs after this call began, so every change committed before it is applied to the
        # index; the candidates' rows are read after the index search, so a speaker deleted
        # before that read is dropped even if the index still held it, and each score is
        # the exact cosine with the centroid SQL holds at that read.
        with self.reading("search", per_statement=True) as conn:
            state = self.snapshot(conn)
            tenant_id = state.tenant_id
            if tenant_id is None:
                return [[] for _ in range(len(q))]
            mine = self._tenant_speaker_ids(conn, tenant_id, state.change_seq)
            with cache.synced(conn, state.change_seq) as index:
                allowed = None if len(mine) == len(index) else mine
                _, ids = index.search(q, index.params.shortlist(k), allowed)
            wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
            rows = candidate_rows(conn, tenant_id, wanted) if wanted else []
        found = {r.id: (r, np.frombuffer(r.centroid, dtype=np.float32)) for r in rows}
        from speakerdb.scoring import cosine_scores

        out: list[list[Candidate]] = []
        for query, row_ids in zip(q, ids, strict=True):
            present = [int(i) for i in row_ids if int(i) in found]
            if not present:
                out.append([])
                continue
            scores = cosine_scores(query, np.stack([found[i][1] for i in present]))
            ranked = sorted(zip(present, scores, strict=True), key=lambda p: (-p[1], p[0]))[:k]
            out.append([candidate_of(found[i][0], float(s)) for i, s in ranked])
        return out

    def _tenant_speaker_ids(
        self, conn: Connection, tenant_id: int, seq: int | None = None
    ) -> npt.NDArray[np.int64]:
        """The ids of the tenant's speakers as of ``conn``'s change sequence (``seq`` when the
        caller has read it through ``conn``), ascending; kept in step with the change log
        (:mod:`speakerdb.storage._tenant_ids`)."""
        return tenant_speaker_ids(conn, self._shared.tenant_ids, tenant_id, seq)

    def index_status(self) -> IndexStatus:
        return self._index_cache().status()

    def index_maintenance_running(self) -> bool:
        """Whether a background index rebuild is under way (see ``background_index``)."""
        return self._cache is not None and self._cache.maintenance_running

    def wait_for_index_maintenance(self, timeout: float | None = None) -> bool:
        """Wait until no background index rebuild runs (at most ``timeout`` s); True when
        none does."""
        return self._cache is None or self._cache.wait_for_maintenance(timeout)

    def index_vectors(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Every (speaker id, centroid) of this tenant in the caught-up index, ids
        ascending: (n,) int64, (n, D) float32. The centroids are full precision even when
        the index quantises them (read from SQL then)."""
        from speakerdb.storage._index_cache import read_all_centroids

        cache = self._index_cache()
        with self.reading("read the centroids") as conn, cache.synced(conn) as index:
            tenant_id = self.tenant_id(conn)
            mine = (
                self._tenant_speaker_ids(conn, tenant_id)
                if tenant_id is not None
                else np.zeros(0, np.int64)
            )
            if index.params.exact_vectors:
                ids, vectors = index.contents()
            else:
                model = self.model()
                assert model is not None  # an index exists, so vectors and their model do
                ids, vectors = read_all_centroids(conn, model.dimension)
        keep = np.isin(ids, mine)
        return ids[keep], vectors[keep]

    def rebuild_index(self, kind: str | None = None) -> IndexStatus:
        """Rebuild the index from SQL and save its file. Raises UsageError when opened
        read-only, StoreError when the file cannot be written."""
        if self.read_only:
            raise UsageError(f"cannot rebuild the index of {self.location.display}: read-only")
        cache = self._index_cache()
        if kind is not None:
            self._set_index_kind(kind)
        cache.rebuild(kind)
        self.erase_other_caches()
        return cache.status()

    def _set_index_kind(self, kind: str) -> None:
        from speakerdb.storage._index_policy import INDEX_KINDS

        if kind not in INDEX_KINDS:
            raise UsageError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {kind!r}")

        def work(conn: Connection) -> None:
            conn.execute(update(StoreState).where(StoreState.id == 1).values(index_kind=kind))

        self.write(work, "set the index kind")

    def stored_index(self) -> IndexFile | str:
        """The index file as it is on disk, not caught up (see
        :func:`~speakerdb.storage._index_file.read_index_file`), or why there is none to
        read: for ``db check`` and for inspecting what a file holds."""
        from speakerdb.storage._index_cache import read_file_as_stored

        model = self.model()
        path = self.location.index_path
        if model is None or path is None:
            return "missing"
        return read_file_as_stored(
            self._engine, path, self.instance_id, model, self.index_key, self.database_identity
        )

    def save_index(self) -> bool:
        """Write the index file now if it is behind."""
        return self._cache.save(force=True) if self._cache is not None else False

    # --- API keys of the HTTP service (see speakerdb.storage._keys) -----------------------------

    def create_key(self, name: str, scopes: Iterable[str]) -> NewApiKey:
        """Create an API key; its secret is in the result, and only there. Raises
        UsageError (read-only, bad name or scope), AlreadyExistsError, StoreError."""
        self._writable("create an API key")
        return _keys.create_key(self._engine, self.location.display, name, scopes, self.tenant)

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every API key of this tenant, without secrets, by name."""
        return _keys.list_keys(self._engine, self.tenant)

    def revoke_key(self, name: str) -> ApiKeyRecord:
        """Delete an API key. Raises UsageError (read-only), NotFoundError, StoreError."""
        self._writable("revoke an API key")
        return _keys.revoke_key(self._engine, self.location.display, name, self.tenant)

    def authenticate(self, secret: str) -> ApiKeyRecord | None:
        """The API key whose secret this is (of any tenant: see its ``tenant``), or None."""
        return _keys.authenticate(self._engine, secret)

    def has_api_keys(self) -> bool:
        """Whether any API key exists."""
        return _keys.any_keys(self._engine)

    def api_keys_required(self) -> bool:
        """Whether a server on this database must require API keys (see
        :func:`speakerdb.storage._keys.keys_required`)."""
        return _keys.keys_required(self._engine)

    def allow_keyless(self) -> None:
        """Clear the "keys required" mark. Raises UsageError (read-only, keys exist)."""
        self._writable("allow keyless access")
        _keys.allow_keyless(self._engine, self.location.display)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise UsageError(f"cannot {what}: {self.location.display} was opened read-only")
