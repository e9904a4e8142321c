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

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, Table, Text, delete, func, select, text, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from speakerdb._identity import ModelIdentity
from speakerdb.errors import (
    AlreadyExistsError,
    ModelMismatchError,
    SpeakerNotFoundError,
    StoreError,
    UsageError,
)
from speakerdb.storage._cache_files import (
    database_identity,
    erase_other_caches,
    placed,
    remember_folder,
)
from speakerdb.storage._engine import (
    create_database_engine,
    read_transaction,
    retrying,
    store_error,
    write_transaction,
)
from speakerdb.storage._location import DatabaseLocation, resolve_location
from speakerdb.storage._metadata import read_stored_metadata, validated_metadata
from speakerdb.storage._migrate import ensure_schema, inspect_read_only
from speakerdb.storage._names import lookup_forms, validated_name
from speakerdb.storage._records import (
    CALIBRATION_SOURCES,
    ENROLL_MODES,
    AppendCheck,
    CalibrationSetting,
    Candidate,
    CompactResult,
    EnrollRequest,
    EnrollResult,
    NewUtterance,
    SpeakerRecord,
    UtteranceRecord,
    vectors_from_bytes,
)
from speakerdb.storage._schema import (
    Calibration,
    Change,
    ModelRow,
    Speaker,
    StoreState,
    Utterance,
    utcnow,
)

if TYPE_CHECKING:
    # FAISS loads with the index, on the first search: enrolling or verifying never needs it.
    from speakerdb.storage._index_cache import IndexCache, IndexStatus
    from speakerdb.storage._index_file import IndexFile

__all__ = ["EnrollmentStore", "validated_name"]

T = TypeVar("T")
AnySelect: TypeAlias = "Select[*tuple[Any, ...]]"  # a SELECT of any columns
_RESCORE_EXTRA = 8  # candidates beyond k re-scored exactly, so ANN ordering errors vanish


class EnrollmentStore:
    """One database: open it with :meth:`open`, close it (or use ``with``) when done.

    Safe to share between threads. Several processes and machines may use one database at
    once; each keeps its own index cache and stays correct.
    """

    def __init__(
        self,
        location: DatabaseLocation,
        engine: Engine,
        instance_id: str,
        index_key: bytes,
        device: str | None = None,
        read_only: bool = False,
        background_index: bool = False,
        database_identity: str = "",
    ) -> None:
        self.location = location
        self.device = device
        self.read_only = read_only
        self.background_index = background_index
        self._engine = engine
        self.instance_id = instance_id
        # Names and marks this database's index caches (see _cache_files): the same
        # whatever URL or path reached it, another for a copy of it.
        self.database_identity = database_identity
        self.index_key = index_key
        self._cache: IndexCache | None = None
        self._cache_lock = threading.Lock()
        self._model: ModelIdentity | None = None
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: Any = None,
        device: str | None = None,
        *,
        read_only: bool = False,
        background_index: bool = False,
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

        Raises ConfigurationError for a bad URL, DatabaseNotFoundError (read-only) when
        there is no database, NotASpeakerDBError when it holds another application's data
        (left untouched), StoreError when it cannot be reached, SchemaOutOfDateError when it
        needs ``speakerdb db upgrade``.
        """
        location = resolve_location(url)
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
        return cls(
            placed(location, identity),
            engine,
            state.instance_id,
            bytes.fromhex(state.index_key),
            device,
            read_only=read_only,
            background_index=background_index,
            database_identity=identity,
        )

    def close(self) -> None:
        """Save the index file if it is worth it, and release connections."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._cache is not None:
                self._cache.wait_for_maintenance()
                self._cache.save()
        except StoreError:
            pass  # the file is a cache; the next opener rebuilds or catches up
        finally:
            self._engine.dispose()

    def __enter__(self) -> EnrollmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        """``with store._read(what) as conn``: a read transaction whose database errors
        become one-line StoreErrors ("cannot <what>: ...")."""
        try:
            with read_transaction(self._engine) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise store_error(exc, f"cannot {what}") from None

    # --- model --------------------------------------------------------------------------------

    def model(self) -> ModelIdentity | None:
        """The model whose vectors this database holds (None until the first enrollment).

        Cached once known: a database changes model only through ``db reembed``, which
        every read of voiceprints notices (see :meth:`_ensure_current_model`)."""
        if self._model is None:
            with self._read("read the model") as conn:
                self._model = _model_of(conn)
        return self._model

    def current_model(self) -> ModelIdentity | None:
        """The model whose vectors the database holds now, read from SQL rather than the
        cache (another process may have switched it with ``db reembed``: then the cached
        model and index are forgotten, as a read of voiceprints would)."""
        with self._read("read the model") as conn:
            current = _model_of(conn)
        held = self._model
        if held is not None and (current is None or not current.same_model(held)):
            self._forget_model()
        return current

    def _forget_model(self) -> None:
        """The database switched model (``db reembed``): the cached model and index go."""
        with self._cache_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.wait_for_maintenance()
        self._model = None

    def _ensure_current_model(self, conn: Connection) -> None:
        """Inside a read: raise ModelMismatchError when the database switched model since
        this store read it (another process ran ``db reembed``): vectors of the model this
        process holds must not be compared with the new model's voiceprints."""
        held = self._model
        if held is None:
            return
        current = _model_of(conn)
        if current is None or not current.same_model(held):
            self._forget_model()
            now = current.label if current is not None else "no model"
            raise ModelMismatchError(
                f"{self.location.display} switched from model {held.label} to {now} since it "
                "was opened (speakerdb db reembed): open it again"
            )

    def check_model(self, identity: ModelIdentity) -> None:
        """Raise ModelMismatchError unless the database is empty or holds ``identity``'s
        vectors."""
        held = self.model()
        if held is not None and not held.same_model(identity):
            raise _mismatch(self.location.display, held, identity)

    def adopt_model(self, identity: ModelIdentity) -> None:
        """Record ``identity`` as this database's model if it has none yet (a calibration or
        the first enrollment fixes it); ModelMismatchError if it holds another."""
        if self.model() is not None:
            self.check_model(identity)
            return

        def work(conn: Connection) -> None:
            _ensure_model(conn, _lock_state(conn), identity, self.location.display)

        self._write(work, "record the model")
        self._model = None

    def remember_model_source(self, identity: ModelIdentity) -> bool:
        """Record ``identity.source`` as where this database's model now loads from, when the
        database holds that model's vectors and remembered another path (the file moved).
        Nothing happens for a built-in model, another model, or a read-only store. Returns
        whether the path changed."""
        held = self.model()
        if (
            self.read_only
            or held is None
            or identity.source is None
            or not held.same_model(identity)
            or held.source == identity.source
        ):
            return False

        def work(conn: Connection) -> None:
            conn.execute(
                update(ModelRow)
                .where(
                    ModelRow.name == identity.name,
                    ModelRow.weights_sha256 == identity.weights_sha256,
                )
                .values(source=identity.source)
            )

        self._write(work, "remember where the model is")
        self._model = None
        return True

    # --- settings -----------------------------------------------------------------------------

    def threshold(self, normalization: str | None = None) -> tuple[float | None, str | None]:
        """The threshold on the score scale calibrated on this database for a score
        normalisation (None: raw cosine), and the note on how it was chosen; (None, None)
        when none is set. With a calibration to LLRs it is the threshold for the answers the
        calibration cannot take."""
        key = normalization or "none"
        with self._read("read the threshold") as conn:
            row = conn.execute(
                select(Calibration.threshold, Calibration.note).where(
                    Calibration.normalization == key
                )
            ).first()
        if row is None or row.threshold is None:
            return None, None
        return row.threshold, row.note

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
        key = normalization or "none"
        with self._read("read the calibration") as conn:
            default = conn.execute(
                select(StoreState.calibration_default).where(StoreState.id == 1)
            ).scalar_one()
            row = conn.execute(
                select(*_table(Calibration).c).where(Calibration.normalization == key)
            ).first()
        if row is None:
            return str(default), None
        return str(default), CalibrationSetting(
            normalization=row.normalization,
            kind=row.kind,
            threshold=row.threshold,
            note=row.note,
            source=row.source,
            calibration=row.calibration,
            p_target=row.p_target,
            c_miss=row.c_miss,
            c_fa=row.c_fa,
            target_far=row.target_far,
            trials_sha256=row.trials_sha256,
            target_trials=row.target_trials,
            nontarget_trials=row.nontarget_trials,
            created_at=_aware(row.created_at),
        )

    def set_calibration(self, setting: CalibrationSetting) -> None:
        """Store how this database decides for ``setting.normalization``, replacing what was
        there. A calibration to LLRs also opts the database in for good: from then on a
        normalisation without a setting uses the bundled calibration (``calibrate --reset``
        returns there). Raises UsageError for a malformed setting."""
        _check_setting(setting)

        def work(conn: Connection) -> None:
            _lock_state(conn)
            conn.execute(
                delete(Calibration).where(Calibration.normalization == setting.normalization)
            )
            conn.execute(
                _table(Calibration)
                .insert()
                .values(
                    normalization=setting.normalization,
                    kind=setting.kind,
                    threshold=setting.threshold,
                    note=setting.note,
                    source=setting.source,
                    calibration=setting.calibration,
                    p_target=setting.p_target,
                    c_miss=setting.c_miss,
                    c_fa=setting.c_fa,
                    target_far=setting.target_far,
                    trials_sha256=setting.trials_sha256,
                    target_trials=setting.target_trials,
                    nontarget_trials=setting.nontarget_trials,
                    created_at=utcnow(),
                )
            )
            if setting.kind == "llr":
                conn.execute(
                    update(StoreState)
                    .where(StoreState.id == 1)
                    .values(calibration_default="bundled")
                )

        self._write(work, "store the calibration")

    def clear_calibration(self, normalization: str | None = None) -> None:
        """Forget this database's setting for a normalisation: the default applies again."""
        key = normalization or "none"

        def work(conn: Connection) -> None:
            conn.execute(delete(Calibration).where(Calibration.normalization == key))

        self._write(work, "reset the calibration")

    def index_kind(self) -> str:
        with self._read("read the index kind") as conn:
            return str(
                conn.execute(select(StoreState.index_kind).where(StoreState.id == 1)).scalar_one()
            )

    # --- writes -------------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T], what: str) -> T:
        if self.read_only:
            raise UsageError(f"cannot {what}: {self.location.display} was opened read-only")

        def attempt() -> T:
            with write_transaction(self._engine) as conn:
                return work(conn)

        try:
            return retrying(attempt, f"cannot {what} in {self.location.display}")
        except IntegrityError as exc:
            raise store_error(exc, f"cannot {what}") from None

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
        prepared = [_validated(r, model.dimension) for r in requests]

        def work(conn: Connection) -> list[EnrollResult]:
            state = _lock_state(conn)
            model_id = _ensure_model(conn, state, model, self.location.display)
            seq = int(state.change_seq)
            results: dict[int, EnrollResult] = {}
            # New speakers (the common case of a large enrollment) go in with a few bulk
            # statements; existing or repeated names take the general path afterwards.
            existing = _existing_names(conn, [r.name for r in prepared])
            fresh: dict[str, int] = {}
            for i, request in enumerate(prepared):
                if (
                    request.name not in existing
                    and request.name not in fresh
                    and request.utterances
                ):
                    fresh[request.name] = i
            if fresh:
                created, seq = _create_speakers(
                    conn, [prepared[i] for i in fresh.values()], model_id, seq
                )
                results.update(zip(fresh.values(), created, strict=True))
            for i in sorted(
                set(range(len(prepared))) - set(results), key=lambda i: prepared[i].name
            ):
                result, changed = _enroll_one(
                    conn, prepared[i], model_id, model.dimension, check_append
                )
                if changed and result.speaker is not None:
                    seq += 1
                    _record_change(conn, result.speaker.id, seq, "upsert")
                results[i] = result
            _set_seq(conn, seq)
            return [results[i] for i in range(len(prepared))]

        return self._write(work, "enroll")

    def delete_speaker(self, name: str) -> SpeakerRecord:
        """Delete a speaker, its utterances and embeddings; its vector leaves every index at
        the next catch-up. Raises SpeakerNotFoundError."""

        def work(conn: Connection) -> SpeakerRecord:
            state = _lock_state(conn)
            row = _speaker_row(conn, name, for_update=True)
            record = _speaker_record(row)
            conn.execute(delete(Utterance).where(Utterance.speaker_id == row.id))
            conn.execute(delete(Speaker).where(Speaker.id == row.id))
            seq = int(state.change_seq) + 1
            _record_change(conn, row.id, seq, "delete")
            _set_seq(conn, seq)
            return record

        record = self._write(work, f"delete {name!r}")
        self._erase_traces()
        return record

    def compact(self) -> CompactResult:
        """Erase the bytes of deleted voiceprints from the database files and give the space
        back: PostgreSQL keeps deleted rows in the table files (dead tuples) until they are
        rewritten, whatever VACUUM and CHECKPOINT do, so this runs VACUUM FULL on the tables
        holding vectors (it locks them exclusively while it runs: writers and readers wait);
        SQLite already zeroes freed pages (``secure_delete``), VACUUM also shrinks the file.
        The index caches are files too: this process's is rewritten from SQL, every other
        one of this database on this machine erased (see :meth:`_erase_traces`).
        Raises UsageError when opened read-only, StoreError."""
        if self.read_only:
            raise UsageError(f"cannot compact {self.location.display}: opened read-only")
        try:
            if self.location.sqlite_path is not None:
                result = self._compact_sqlite(self.location.sqlite_path)
            elif self._engine.dialect.name == "postgresql":
                result = self._compact_postgresql()
            else:
                return CompactResult(self.location.display, 0, 0)  # in-memory: nothing on disk
        except SQLAlchemyError as exc:
            raise store_error(exc, f"cannot compact {self.location.display}") from None
        # The caches are files too: this one rewritten from SQL, the others erased.
        self._erase_traces()
        return result

    def _compact_sqlite(self, path: Path) -> CompactResult:
        def size() -> int:
            companions = [path, path.with_name(path.name + "-wal")]
            return sum(p.stat().st_size for p in companions if p.exists())

        before = size()
        raw = self._engine.raw_connection()
        try:
            # VACUUM cannot run inside a transaction: the DBAPI connection is in autocommit
            # mode (isolation_level None, see the engine), so it runs on its own.
            cursor = raw.cursor()
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            raw.close()
        return CompactResult(self.location.display, before, size())

    def _compact_postgresql(self) -> CompactResult:
        tables = ("utterances", "reembeddings", "speakers")

        def size(conn: Connection) -> int:
            return int(
                sum(
                    conn.execute(
                        text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": t}
                    ).scalar_one()
                    for t in tables
                )
            )

        with self._engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            before = size(conn)
            for table in tables:
                conn.exec_driver_sql(f'VACUUM (FULL, ANALYZE) "{table}"')
            after = size(conn)
        return CompactResult(self.location.display, before, after)

    def _erase_traces(self) -> None:
        """After a delete: no copy of the voiceprint may linger on disk. The index file is
        rewritten without it, every other cache file of this database on this machine is
        erased (see :mod:`speakerdb.storage._cache_files`), and SQLite's write-ahead log is
        checkpointed and truncated (pages freed by the delete are zeroed by
        ``secure_delete``)."""
        path = self.location.index_path
        if path is not None:
            try:
                # Existence is judged under the file's lock: a process saving an index that
                # still held the speaker either finished before (its file is rewritten here)
                # or catches up after (and drops the speaker itself).
                self._index_cache().save(force=True, only_if_present=True)
            except (OSError, StoreError):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)  # a cache: better gone than holding deleted data
        self.erase_other_caches()
        if self.location.sqlite_path is not None:
            try:
                with self._engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except SQLAlchemyError:
                pass  # readers may block the checkpoint; the next one completes it

    def erase_other_caches(self) -> list[Path]:
        """Delete the index cache files of this database other than its own (see
        :mod:`speakerdb.storage._cache_files`); returns them."""
        return erase_other_caches(self.location, self.database_identity, self.instance_id)

    def other_cache_files(self) -> list[Path]:
        """The index cache files of this database on this machine other than
        ``location.index_path`` (see :mod:`speakerdb.storage._cache_files`)."""
        from speakerdb.storage._cache_files import other_cache_files

        return other_cache_files(self.location, self.database_identity, self.instance_id)

    def rename_speaker(self, old: str, new: str) -> SpeakerRecord:
        """Rename; the voiceprint is untouched. Raises SpeakerNotFoundError,
        AlreadyExistsError, UsageError (an invalid new name)."""
        new = validated_name(new)

        def work(conn: Connection) -> SpeakerRecord:
            _lock_state(conn)
            row = _speaker_row(conn, old, for_update=True)
            taken = conn.execute(select(Speaker.id).where(Speaker.name == new)).scalar()
            if taken is not None and taken != row.id:
                raise AlreadyExistsError(f"a speaker named {new!r} already exists")
            conn.execute(
                update(Speaker).where(Speaker.id == row.id).values(name=new, updated_at=utcnow())
            )
            return _speaker_record(_speaker_row(conn, new))

        return self._write(work, f"rename {old!r}")

    def set_metadata(self, name: str, metadata: dict[str, Any] | None) -> SpeakerRecord:
        """Replace a speaker's metadata (None clears it)."""
        _check_metadata(metadata)

        def work(conn: Connection) -> SpeakerRecord:
            _lock_state(conn)
            row = _speaker_row(conn, name, for_update=True)
            conn.execute(
                update(Speaker)
                .where(Speaker.id == row.id)
                .values({_METADATA: metadata, Speaker.updated_at: utcnow()})
            )
            return _speaker_record(_speaker_row(conn, row.name))

        return self._write(work, f"update {name!r}")

    # --- reads --------------------------------------------------------------------------------

    def speaker(self, name: str) -> SpeakerRecord:
        with self._read(f"read {name!r}") as conn:
            return _speaker_record(_speaker_row(conn, name))

    def speaker_records(self, names: Sequence[str]) -> dict[str, SpeakerRecord]:
        """The records of those of ``names`` that exist, keyed by the names as given (each
        looked up like :meth:`speaker`)."""
        with self._read("read speakers") as conn:
            rows = _rows_by_name(conn, names, _SPEAKER_COLUMNS)
        return {name: _speaker_record(row) for name, row in rows.items()}

    def speakers(self) -> list[SpeakerRecord]:
        with self._read("list speakers") as conn:
            rows = conn.execute(_SPEAKER_COLUMNS.order_by(Speaker.name)).all()
        return [_speaker_record(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(speakers, utterances)."""
        with self._read("count speakers") as conn:
            speakers = conn.execute(select(func.count()).select_from(Speaker)).scalar_one()
            utterances = conn.execute(select(func.count()).select_from(Utterance)).scalar_one()
        return int(speakers), int(utterances)

    def utterances(self, name: str) -> list[UtteranceRecord]:
        with self._read(f"read {name!r}") as conn:
            row = _speaker_row(conn, name)
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
                .where(Utterance.speaker_id == row.id)
                .order_by(Utterance.id)
            ).all()
        return [
            UtteranceRecord(
                r.id,
                r.audio_sha256,
                r.source,
                r.duration,
                r.speech_seconds,
                _aware(r.created_at),
                r.bandwidth_hz,
            )
            for r in rows
        ]

    def utterance_embeddings(self, name: str) -> npt.NDArray[np.float32]:
        """(n, D) embeddings of a speaker's utterances, in enrollment order."""
        with self._read(f"read {name!r}") as conn:
            row = _speaker_row(conn, name)
            dimension = _dimension(conn)
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
        out: dict[str, set[str]] = {n: set() for n in names}
        if not names:
            return out
        with self._read("read enrolled audio") as conn:
            found = _rows_by_name(conn, names, select(Speaker.id, Speaker.name))
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

    def centroid(self, name: str) -> tuple[SpeakerRecord, npt.NDArray[np.float32]]:
        """A speaker and its voiceprint: the (D,) unit-norm centroid, read from SQL."""
        with self._read(f"read {name!r}") as conn:
            self._ensure_current_model(conn)
            row = _speaker_row(conn, name, columns=_SPEAKER_COLUMNS.add_columns(Speaker.centroid))
            vector = np.frombuffer(row.centroid, dtype=np.float32).copy()
        return _speaker_record(row), vector

    # --- index --------------------------------------------------------------------------------

    def _index_cache(self) -> IndexCache:
        from speakerdb.storage._index_cache import IndexCache

        with self._cache_lock:
            if self._cache is None:
                model = self.model()
                if model is None:
                    raise StoreError("the database has no voiceprints yet")
                remember_folder(self.location)
                self._cache = IndexCache(
                    self._engine,
                    self.location.index_path,
                    self.instance_id,
                    model,
                    self.index_key,
                    self.index_kind(),
                    self.device,
                    background=self.background_index,
                    database=self.database_identity,
                )
            return self._cache

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
        # One transaction: catch up with the change log, search, fetch the candidates.
        with self._read("search") as conn:
            self._ensure_current_model(conn)
            with cache.synced(conn) as index:
                _, ids = index.search(q, k + _RESCORE_EXTRA)
            wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
            rows = (
                conn.execute(
                    select(
                        Speaker.id,
                        Speaker.name,
                        Speaker.centroid,
                        Speaker.utterance_count,
                        Speaker.speech_seconds,
                        Speaker.bandwidth_hz,
                    ).where(Speaker.id.in_(wanted))
                ).all()
                if wanted
                else []
            )
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
            out.append([_candidate(cast(Row[Any], found[i][0]), float(s)) for i, s in ranked])
        return out

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
        """Every (speaker id, centroid) in the caught-up index, ids ascending."""
        return self._index_cache().index().contents()

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

        self._write(work, "set the index kind")

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


# --- helpers ------------------------------------------------------------------------------------


_METADATA = Speaker.__table__.c.metadata

_SPEAKER_COLUMNS: AnySelect = select(
    Speaker.id,
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
)


def _table(mapped: type[Any]) -> Table:
    """The Core table of a mapped class (typed: ``__table__`` is a FromClause to mypy)."""
    return cast(Table, mapped.__table__)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _speaker_record(row: Row[Any]) -> SpeakerRecord:
    metadata, metadata_error = read_stored_metadata(row.speaker_metadata)
    return SpeakerRecord(
        id=row.id,
        name=row.name,
        metadata=metadata,
        metadata_error=metadata_error,
        status=row.status,
        utterances=row.utterance_count,
        speech_seconds=row.speech_seconds,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        bandwidth_hz=row.bandwidth_hz,
    )


def _candidate(row: Row[Any], score: float) -> Candidate:
    return Candidate(
        row.id, row.name, score, row.utterance_count, row.speech_seconds, row.bandwidth_hz
    )


def _check_setting(setting: CalibrationSetting) -> None:
    if setting.normalization not in ("none", "asnorm"):
        raise UsageError(f"unknown normalisation {setting.normalization!r}")
    if setting.threshold is not None and not np.isfinite(setting.threshold):
        raise UsageError(f"threshold must be finite, not {setting.threshold}")
    if setting.kind == "threshold":
        if setting.threshold is None:
            raise UsageError("a threshold setting needs a threshold")
        return
    if setting.kind != "llr" or setting.source not in CALIBRATION_SOURCES:
        raise UsageError(f"unknown calibration setting {setting.kind!r} / {setting.source!r}")
    if (setting.source in ("database", "self")) != (setting.calibration is not None):
        raise UsageError("a database calibration, and only one, stores its calibration")
    if (setting.p_target is None) == (setting.target_far is None):
        raise UsageError("an operating point needs a prior or a target false-accept rate")


def _bandwidth_of(seconds: Sequence[float], bandwidths: Sequence[float | None]) -> float | None:
    """The voiceprint's bandwidth: its recordings' bandwidths averaged with their speech
    seconds as weights (as speakerdb._calibration.enrollment_quality), None if any is
    unknown or no recording has speech."""
    known = [b for b in bandwidths if b is not None]
    total = float(sum(seconds))
    if not known or len(known) != len(bandwidths) or total <= 0:
        return None
    return float(sum(s * b for s, b in zip(seconds, known, strict=True)) / total)


def _speaker_row(
    conn: Connection, name: str, for_update: bool = False, columns: AnySelect | None = None
) -> Row[Any]:
    """The speaker called ``name``: stored exactly so, else under its canonical form (see
    :mod:`speakerdb.storage._names`). Raises SpeakerNotFoundError."""
    forms = lookup_forms(name)
    query = (columns if columns is not None else _SPEAKER_COLUMNS).where(Speaker.name.in_(forms))
    if for_update:
        query = query.with_for_update()
    rows = {row.name: row for row in conn.execute(query).all()}
    for form in forms:
        if form in rows:
            return rows[form]
    raise SpeakerNotFoundError(name)


def _rows_by_name(
    conn: Connection, names: Sequence[str], columns: AnySelect
) -> dict[str, Row[Any]]:
    """The rows (``columns`` must include Speaker.name) of those of ``names`` that exist,
    keyed by the name as given; each looked up like :func:`_speaker_row`."""
    forms = {name: lookup_forms(name) for name in names}
    wanted = sorted({form for variants in forms.values() for form in variants})
    rows: dict[str, Row[Any]] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows.update((r.name, r) for r in conn.execute(columns.where(Speaker.name.in_(chunk))))
    out: dict[str, Row[Any]] = {}
    for name, variants in forms.items():
        found = next((rows[form] for form in variants if form in rows), None)
        if found is not None:
            out[name] = found
    return out


def _model_of(conn: Connection) -> ModelIdentity | None:
    row = conn.execute(
        select(
            ModelRow.name,
            ModelRow.weights_sha256,
            ModelRow.dimension,
            ModelRow.default_threshold,
            ModelRow.family,
            ModelRow.source,
            ModelRow.threshold_note,
        )
        .join(StoreState, StoreState.model_id == ModelRow.id)
        .where(StoreState.id == 1)
    ).first()
    if row is None:
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


def _dimension(conn: Connection) -> int:
    model = _model_of(conn)
    if model is None:
        raise StoreError("the database has no voiceprints yet")
    return model.dimension


def _described(model: ModelIdentity) -> str:
    where = f" from {model.source}" if model.source else ""
    return f"{model.label} ({model.dimension}-d{where})"


def _mismatch(where: str, held: ModelIdentity, offered: ModelIdentity) -> ModelMismatchError:
    use = held.source or held.name
    return ModelMismatchError(
        f"{where} holds voiceprints of model {_described(held)} but these come from "
        f"{_described(offered)}; vectors of two models are never mixed: use --model {use} "
        "with this database (or none: it loads its own), or another database (--db URL)"
    )


def _lock_state(conn: Connection) -> Row[int, int | None]:
    """Lock the state row for the rest of the transaction (serialises writers)."""
    return conn.execute(
        select(StoreState.change_seq, StoreState.model_id)
        .where(StoreState.id == 1)
        .with_for_update()
    ).one()


def _set_seq(conn: Connection, seq: int) -> None:
    conn.execute(update(StoreState).where(StoreState.id == 1).values(change_seq=seq))


def insert_model_row(conn: Connection, model: ModelIdentity) -> int:
    """Record ``model`` in the ``models`` table; returns its new id."""
    return int(
        conn.execute(
            _table(ModelRow)
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


def _ensure_model(
    conn: Connection, state: Row[int, int | None], model: ModelIdentity, where: str
) -> int:
    """The id of ``model`` in this database, registering it if the database has none yet."""
    if state.model_id is not None:
        held = _model_of(conn)
        assert held is not None
        if not held.same_model(model):
            raise _mismatch(where, held, model)
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


def _record_change(conn: Connection, speaker_id: int, seq: int, op: str) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(_table(Change)).values(speaker_id=speaker_id, seq=seq, op=op)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["speaker_id"],
            set_={"seq": statement.excluded.seq, "op": statement.excluded.op},
        )
    )
    if op == "upsert":
        conn.execute(update(Speaker).where(Speaker.id == speaker_id).values(change_seq=seq))


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    validated_metadata(metadata)


def _validated(request: EnrollRequest, dimension: int) -> EnrollRequest:
    name = validated_name(request.name)
    if request.mode not in ENROLL_MODES:
        raise UsageError(f"mode must be one of {', '.join(ENROLL_MODES)}, not {request.mode!r}")
    _check_metadata(request.metadata)
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
                bandwidth_hz=_checked_bandwidth(u.bandwidth_hz),
            )
        )
    return EnrollRequest(name, clean, request.mode, request.metadata)


def _checked_bandwidth(value: float | None) -> float | None:
    if value is None:
        return None
    hz = float(value)
    if not (np.isfinite(hz) and hz > 0):
        raise UsageError(f"bandwidth must be positive Hz or unknown (None), not {value!r}")
    return hz


def _centroid(embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    mean = embeddings.astype(np.float64).mean(axis=0)
    unit: npt.NDArray[np.float32] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return unit


def _split_duplicates(
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


def _utterance_rows(
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


def _existing_names(conn: Connection, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    unique = sorted(set(names))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        found.update(conn.execute(select(Speaker.name).where(Speaker.name.in_(chunk))).scalars())
    return found


def _create_speakers(
    conn: Connection, requests: list[EnrollRequest], model_id: int, seq: int
) -> tuple[list[EnrollResult], int]:
    """Insert new speakers (distinct names, none existing) with their utterances and change
    log entries in bulk statements. Returns their results and the last sequence number used."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    kept: list[tuple[list[NewUtterance], list[str]]] = []
    for request in requests:
        added, duplicates = _split_duplicates(request.utterances, set())
        seq += 1
        kept.append((added, duplicates))
        rows.append(
            {
                "name": request.name,
                "metadata": request.metadata,
                "status": "active",
                "centroid": _centroid(np.stack([u.embedding for u in added])).tobytes(),
                "utterance_count": len(added),
                "speech_seconds": float(sum(u.speech_seconds for u in added)),
                "bandwidth_hz": _bandwidth_of(
                    [u.speech_seconds for u in added], [u.bandwidth_hz for u in added]
                ),
                "change_seq": seq,
                "created_at": now,
                "updated_at": now,
            }
        )
    ids = (
        conn.execute(
            _table(Speaker).insert().returning(Speaker.id, sort_by_parameter_order=True), rows
        )
        .scalars()
        .all()
    )
    conn.execute(
        _table(Utterance).insert(),
        [
            row
            for speaker_id, (added, _) in zip(ids, kept, strict=True)
            for row in _utterance_rows(speaker_id, added, model_id, now)
        ],
    )
    # Ids are never reused, so a new speaker has no change-log entry yet.
    conn.execute(
        _table(Change).insert(),
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


def _enroll_one(
    conn: Connection,
    request: EnrollRequest,
    model_id: int,
    dimension: int,
    check_append: AppendCheck | None = None,
) -> tuple[EnrollResult, bool]:
    """Apply one enrollment to an EXISTING speaker inside the caller's transaction (new
    speakers go through :func:`_create_speakers`); returns (result, centroid changed)."""
    now = utcnow()
    existing = conn.execute(
        _SPEAKER_COLUMNS.add_columns(Speaker.centroid)
        .where(Speaker.name == request.name)
        .with_for_update()
    ).first()
    if existing is None:
        # Only "skip" with nothing to enroll gets here for an unknown name.
        return EnrollResult(request.name, None, skipped=True), False
    if request.mode == "skip":
        return EnrollResult(request.name, _speaker_record(existing), skipped=True), False

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
    added, duplicates = _split_duplicates(request.utterances, known)
    if added and request.mode == "append" and check_append is not None:
        # Judged against the voiceprint as it stands, before anything of this request.
        before = np.frombuffer(existing.centroid, dtype=np.float32).copy()
        if not check_append(_speaker_record(existing), before, added):
            return EnrollResult(
                request.name, _speaker_record(existing), duplicates=duplicates, refused=True
            ), False

    if not added and removed == 0:
        if request.metadata is not None:
            conn.execute(
                update(Speaker)
                .where(Speaker.id == speaker_id)
                .values({_METADATA: request.metadata, Speaker.updated_at: now})
            )
            existing = _speaker_row(conn, request.name)
        return EnrollResult(request.name, _speaker_record(existing), duplicates=duplicates), False

    if added:
        conn.execute(_table(Utterance).insert(), _utterance_rows(speaker_id, added, model_id, now))
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
        "centroid": _centroid(embeddings).tobytes(),
        "utterance_count": len(rows),
        "speech_seconds": float(sum(r.speech_seconds for r in rows)),
        "bandwidth_hz": _bandwidth_of(
            [r.speech_seconds for r in rows], [r.bandwidth_hz for r in rows]
        ),
        "updated_at": now,
    }
    if request.metadata is not None:
        values["metadata"] = request.metadata
    conn.execute(update(Speaker).where(Speaker.id == speaker_id).values(**values))
    record = _speaker_record(_speaker_row(conn, request.name))
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
