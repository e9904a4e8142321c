"""The store's side of the audit log: lookups' entries, reading the log, checking the chain.

Changes write their entries themselves, inside their own transactions (see
:mod:`speakerdb.storage._audit`). A store opened read-only writes its lookups' entries
through a second, writable engine made on first need; when the database cannot be written
at all (a read-only file), the lookup is not recorded: whoever can read the file holds
every voiceprint in it anyway, and no audit log could bind them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from speakerdb.errors import StoreError
from speakerdb.storage._audit import (
    AuditCheck,
    AuditEntry,
    PendingEntry,
    append,
    check_chain,
    lookups_are_recorded,
    read_entries,
)
from speakerdb.storage._connection import StoreConnection
from speakerdb.storage._engine import (
    create_database_engine,
    retrying,
    store_error,
    write_transaction,
)

__all__ = ["AuditedStore"]


class AuditedStore(StoreConnection):
    """Audit verbs of :class:`~speakerdb.storage._store.EnrollmentStore`."""

    _audit_lock = threading.Lock()

    @property
    def _audit_engine(self) -> Engine | None:
        return self._shared.audit_engine

    @_audit_engine.setter
    def _audit_engine(self, engine: Engine | None) -> None:
        self._shared.audit_engine = engine

    @property
    def _audit_unwritable(self) -> bool:
        return self._shared.audit_unwritable

    @_audit_unwritable.setter
    def _audit_unwritable(self, value: bool) -> None:
        self._shared.audit_unwritable = value

    def record_lookups(self, entries: Sequence[PendingEntry]) -> None:
        """Append lookups' entries (verify, identify, compare) in one small transaction of
        their own, after the decisions. Raises StoreError when the entry cannot be written
        to a writable database (the caller's answer must not go out unrecorded)."""
        if not entries or not lookups_are_recorded():
            return
        if not self.read_only:
            self.write(
                lambda conn: append(conn, self.writing_tenant(conn), entries),
                "write the audit log",
            )
            return
        engine = self._writable_engine()
        if engine is None:
            return

        def attempt() -> None:
            with write_transaction(engine) as conn:
                append(conn, self.writing_tenant(conn), entries)

        retrying(attempt, f"cannot write the audit log of {self.location.display}")

    def _writable_engine(self) -> Engine | None:
        with self._audit_lock:
            if self._audit_engine is None and not self._audit_unwritable:
                if self.location.sqlite_path is None and self.location.dialect == "sqlite":
                    self._audit_unwritable = True  # in memory: read-only means no writes
                else:
                    try:
                        self._audit_engine = create_database_engine(self.location)
                    except StoreError:
                        self._audit_unwritable = True
            return self._audit_engine

    def close(self) -> None:
        if self._view:
            return
        super().close()
        with self._audit_lock:
            if self._audit_engine is not None:
                self._audit_engine.dispose()
                self._audit_engine = None

    def audit_entries(
        self,
        since: dt.datetime | None = None,
        speaker: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """This tenant's audit entries in chain order (see
        :func:`speakerdb.storage._audit.read_entries`). Raises UsageError (an unknown
        action, a limit below 1), StoreError."""
        with self.reading("read the audit log") as conn:
            return read_entries(conn, self.tenant_id(conn), since, speaker, action, limit)

    def audit_verify(self) -> AuditCheck:
        """Check this tenant's whole chain (see
        :func:`speakerdb.storage._audit.check_chain`)."""
        try:
            with self.reading("check the audit log") as conn:
                return check_chain(conn, self.tenant_id(conn))
        except SQLAlchemyError as exc:  # pragma: no cover - reading() translates these
            raise store_error(exc, "cannot check the audit log") from None
