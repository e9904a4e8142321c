"""What every part of the store stands on: one database's engine and where it is, its read
and write transactions (errors translated to one-line StoreErrors, writes refused when opened
read-only), the guard that keeps one model's vectors per database, and the index cache with
the erasure of its copies.

:class:`StoreConnection` is the base of
:class:`~speakerdb.storage._store.EnrollmentStore`; the modules that work inside its
transactions (re-embedding, checks) take it.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from speakerdb._identity import ModelIdentity
from speakerdb.errors import ModelMismatchError, StoreError, UsageError
from speakerdb.storage._cache_files import erase_other_caches, remember_folder
from speakerdb.storage._compaction import checkpoint_wal
from speakerdb.storage._engine import (
    read_transaction,
    retrying,
    statement_reads,
    store_error,
    write_transaction,
)
from speakerdb.storage._location import DatabaseLocation
from speakerdb.storage._rows import (
    StoreSnapshot,
    ensure_model,
    lock_state,
    model_mismatch,
    model_of,
    store_snapshot,
)
from speakerdb.storage._schema import ModelRow, StoreState
from speakerdb.storage._tenants import DEFAULT_TENANT, ensure_tenant, find_tenant, validated_tenant

if TYPE_CHECKING:
    # FAISS loads with the index, on the first search: enrolling or verifying never needs it.
    from speakerdb.storage._index_cache import IndexCache

__all__ = ["StoreConnection"]

T = TypeVar("T")


@dataclass
class _Shared:
    """What every tenant view of one open database shares (see
    :meth:`StoreConnection.in_tenant`): the model, the index cache, the audit log's
    writable engine, and each tenant's speaker ids as of a change sequence."""

    model: ModelIdentity | None = None
    cache: IndexCache | None = None
    closed: bool = False
    audit_engine: Engine | None = None
    audit_unwritable: bool = False
    tenant_ids: dict[int, tuple[int, Any]] = field(default_factory=dict)


class StoreConnection:
    """One open database: its engine, transactions, model guard and index cache, acting in
    one tenant (``tenant``; :meth:`in_tenant` gives a view of the same database in
    another). Safe to share between threads."""

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
        self._shared = _Shared()
        self._cache_lock = threading.Lock()
        self._view = False
        self.tenant = DEFAULT_TENANT
        self._tenant_id: int | None = 1  # the default tenant's id in every database

    # The state every tenant view shares lives in ``_shared``.
    @property
    def _cache(self) -> IndexCache | None:
        return self._shared.cache

    @_cache.setter
    def _cache(self, cache: IndexCache | None) -> None:
        self._shared.cache = cache

    @property
    def _model(self) -> ModelIdentity | None:
        return self._shared.model

    @_model.setter
    def _model(self, model: ModelIdentity | None) -> None:
        self._shared.model = model

    # --- tenants ------------------------------------------------------------------------------

    def in_tenant(self, tenant: str) -> Self:
        """This database as seen by tenant ``tenant``: a view sharing the connections, the
        model and the index with this store, whose every verb acts in that tenant only.
        Closing a view does nothing (close the store it came from). Raises UsageError for
        an invalid tenant name."""
        name = validated_tenant(tenant)
        view = copy.copy(self)
        view.tenant = name
        view._tenant_id = 1 if name == DEFAULT_TENANT else None
        view._view = True
        return view

    def tenant_id(self, conn: Connection) -> int | None:
        """This store's tenant's id, or None when the tenant was never written (it then
        holds nothing). Known ids are kept: a tenant is never deleted."""
        if self._tenant_id is None:
            self._tenant_id = find_tenant(conn, self.tenant)
        return self._tenant_id

    def writing_tenant(self, conn: Connection) -> int:
        """Inside a write transaction: this store's tenant's id, creating the tenant when it
        does not exist (not kept until committed: a rolled-back id may be reused)."""
        if self._tenant_id is not None:
            return self._tenant_id
        return ensure_tenant(conn, self.tenant)

    def close(self) -> None:
        """Save the index file if it is worth it, and release connections (a tenant view:
        nothing)."""
        if self._view or self._shared.closed:
            return
        self._shared.closed = True
        try:
            if self._cache is not None:
                self._cache.wait_for_maintenance()
                self._cache.save()
        except StoreError:
            pass  # the file is a cache; the next opener rebuilds or catches up
        finally:
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for the storage layer's own modules)."""
        return self._engine

    @contextlib.contextmanager
    def reading(self, what: str, per_statement: bool = False) -> Iterator[Connection]:
        """``with store.reading(what) as conn``: a read transaction whose database errors
        become one-line StoreErrors ("cannot <what>: ..."). ``per_statement``: the reads
        need no snapshot shared between statements (see
        :func:`~speakerdb.storage._engine.statement_reads`)."""
        begin = statement_reads if per_statement else read_transaction
        try:
            with begin(self._engine) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise store_error(exc, f"cannot {what}") from None

    # --- model --------------------------------------------------------------------------------

    def model(self) -> ModelIdentity | None:
        """The model whose vectors this database holds (None until the first enrollment).

        Cached once known: a database changes model only through ``db reembed``, which
        every read of voiceprints notices (see :meth:`ensure_current_model`)."""
        if self._model is None:
            with self.reading("read the model") as conn:
                self._model = model_of(conn)
        return self._model

    def current_model(self) -> ModelIdentity | None:
        """The model whose vectors the database holds now, read from SQL rather than the
        cache (another process may have switched it with ``db reembed``: then the cached
        model and index are forgotten, as a read of voiceprints would)."""
        with self.reading("read the model") as conn:
            current = model_of(conn)
        held = self._model
        if held is not None and (current is None or not current.same_model(held)):
            self.forget_model()
        return current

    def forget_model(self) -> None:
        """The database switched model (``db reembed``): the cached model and index go."""
        with self._cache_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.wait_for_maintenance()
        self._model = None

    def ensure_current_model(self, conn: Connection) -> None:
        """Inside a read: raise ModelMismatchError when the database switched model since
        this store read it (another process ran ``db reembed``): vectors of the model this
        process holds must not be compared with the new model's voiceprints."""
        if self._model is not None:
            self._refuse_switched_model(model_of(conn))

    def snapshot(self, conn: Connection) -> StoreSnapshot:
        """Inside a read, in one statement: the change sequence, this store's tenant id (None:
        never written) and the check of :meth:`ensure_current_model` (ModelMismatchError).
        What :meth:`ensure_current_model`, :meth:`tenant_id` and a read of the change
        sequence would give, in one round trip instead of up to three."""
        unknown = self._tenant_id is None
        state = store_snapshot(conn, self.tenant if unknown else None)
        if self._model is not None:
            self._refuse_switched_model(state.model)
        if unknown and state.tenant_id is not None:
            self._tenant_id = state.tenant_id  # kept: a tenant is never deleted
        return StoreSnapshot(state.change_seq, state.model, self._tenant_id)

    def _refuse_switched_model(self, current: ModelIdentity | None) -> None:
        held = self._model
        if held is None:
            return
        if current is None or not current.same_model(held):
            self.forget_model()
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
            raise model_mismatch(self.location.display, held, identity)

    def adopt_model(self, identity: ModelIdentity) -> None:
        """Record ``identity`` as this database's model if it has none yet (a calibration or
        the first enrollment fixes it); ModelMismatchError if it holds another."""
        if self.model() is not None:
            self.check_model(identity)
            return

        def work(conn: Connection) -> None:
            ensure_model(conn, lock_state(conn), identity, self.location.display)

        self.write(work, "record the model")
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

        self.write(work, "remember where the model is")
        self._model = None
        return True

    # --- transactions and the index cache ------------------------------------------------------

    def index_kind(self) -> str:
        """The index kind this database asks for ("auto", "flat" or "ivf")."""
        with self.reading("read the index kind") as conn:
            return str(
                conn.execute(select(StoreState.index_kind).where(StoreState.id == 1)).scalar_one()
            )

    def write(self, work: Callable[[Connection], T], what: str) -> T:
        """Run ``work(conn)`` in one write transaction (retried when the database is busy
        or a serialisation fails) and return what it returns. Raises UsageError when opened
        read-only, StoreError ("cannot <what> ...") for database errors."""
        if self.read_only:
            raise UsageError(f"cannot {what}: {self.location.display} was opened read-only")

        def attempt() -> T:
            with write_transaction(self._engine) as conn:
                return work(conn)

        try:
            return retrying(attempt, f"cannot {what} in {self.location.display}")
        except IntegrityError as exc:
            raise store_error(exc, f"cannot {what}") from None

    def erase_traces(self) -> None:
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
            checkpoint_wal(self._engine)

    def erase_other_caches(self) -> list[Path]:
        """Delete the index cache files of this database other than its own (see
        :mod:`speakerdb.storage._cache_files`); returns them."""
        return erase_other_caches(self.location, self.database_identity, self.instance_id)

    def other_cache_files(self) -> list[Path]:
        """The index cache files of this database on this machine other than
        ``location.index_path`` (see :mod:`speakerdb.storage._cache_files`)."""
        from speakerdb.storage._cache_files import other_cache_files

        return other_cache_files(self.location, self.database_identity, self.instance_id)

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
