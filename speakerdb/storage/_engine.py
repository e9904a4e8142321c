"""Connections and transactions: SQLite set up for durability and concurrency, PostgreSQL via
psycopg 3, retries where the database asks for them, and database errors translated.

SQLite: WAL journal, ``synchronous=FULL`` (a commit that returned survives a crash of the
process or of the machine), foreign keys on, and write transactions opened with ``BEGIN
IMMEDIATE`` so that two writers queue on the lock instead of failing when a reader tries to
become a writer. A busy timeout makes waits happen inside SQLite; a retry with backoff covers
what is left. PostgreSQL: serialization failures and deadlocks are retried.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from speakerdb.errors import MissingDependencyError, StoreError
from speakerdb.storage._location import DatabaseLocation

__all__ = [
    "create_database_engine",
    "read_transaction",
    "retrying",
    "store_error",
    "write_transaction",
]

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_DEADLINE_S = 120.0
_WRITE_OPTION = "speakerdb_write"
_RETRYABLE_PG_STATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock timeout


def create_database_engine(location: DatabaseLocation) -> Engine:
    """An Engine for ``location``; creates the SQLite file (mode 0600) and its folder."""
    if location.dialect == "sqlite":
        return _sqlite_engine(location)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "PostgreSQL needs the psycopg driver: pip install 'speakerdb[postgres]'"
        ) from None
    try:
        return create_engine(location.url, pool_pre_ping=True, pool_size=2, max_overflow=4)
    except SQLAlchemyError as exc:
        raise store_error(exc, location.display) from None


def _sqlite_engine(location: DatabaseLocation) -> Engine:
    path = location.sqlite_path
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create database file {path}: {exc.strerror or exc}") from None
        engine = create_engine(
            location.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
    else:
        # In-memory: one shared connection, or every connection would see its own database.
        engine = create_engine(
            location.url,
            connect_args={"check_same_thread": False},
            poolclass=StaticPool,
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event decide how transactions start (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if path is not None:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Voiceprints are biometric data: deleted rows are overwritten, not just unlinked.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: takes SQLite's write lock at BEGIN. Commits on exit,
    rolls back on error."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot for everything read inside it."""
    with engine.connect() as conn, conn.begin():
        yield conn


def _retryable(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    if state in _RETRYABLE_PG_STATES:
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    return False


def retrying(fn: Callable[[], T], what: str, deadline_s: float = RETRY_DEADLINE_S) -> T:
    """Run ``fn`` (a whole transaction), retrying with jittered exponential backoff while the
    database reports lock contention, serialization failures or deadlocks."""
    start = time.monotonic()
    delay = 0.01
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not _retryable(exc) or time.monotonic() - start > deadline_s:
                raise store_error(exc, what) from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def store_error(exc: SQLAlchemyError, what: str) -> StoreError:
    """A one-line StoreError for a database failure while doing ``what``."""
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    if _retryable(exc):
        reason = f"other writers kept the database busy for over {RETRY_DEADLINE_S:.0f} s"
    return StoreError(f"{what}: {reason}")
