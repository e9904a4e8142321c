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
import logging
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from speakerdb.errors import (
    DatabaseNotFoundError,
    MissingDependencyError,
    NotASpeakerDBError,
    StoreError,
)
from speakerdb.storage._location import DatabaseLocation, mask_password

__all__ = [
    "create_database_engine",
    "read_transaction",
    "retrying",
    "statement_reads",
    "store_error",
    "tighten_permissions",
    "write_transaction",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_DEADLINE_S = 120.0
_WRITE_OPTION = "speakerdb_write"
_RETRYABLE_PG_STATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock timeout


def create_database_engine(location: DatabaseLocation, read_only: bool = False) -> Engine:
    """An Engine for ``location``.

    Writable (the default): creates the SQLite file (mode 0600) and its folder, and tightens
    an existing file (and its -wal/-shm) to 0600, since voiceprints are about to go in.
    ``read_only``: nothing is created or changed: SQLite is opened so that no statement can
    write (see :func:`_sqlite_reader`), PostgreSQL sessions are read-only transactions.
    """
    if location.dialect == "sqlite":
        return _sqlite_engine(location, read_only)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "PostgreSQL needs the psycopg driver: pip install 'speakerdb[postgres]'"
        ) from None
    # A read-only session refuses every write in the server itself, whatever the code does.
    connect_args = {"options": "-c default_transaction_read_only=on"} if read_only else {}
    try:
        return create_engine(
            location.url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args=connect_args,
        )
    except SQLAlchemyError as exc:
        raise store_error(exc, location.display) from None
    except (ValueError, TypeError) as exc:  # a URL query option SQLAlchemy cannot convert
        raise StoreError(f"{location.display}: {mask_password(str(exc))}") from None


def tighten_permissions(path: Path) -> None:
    """Make the SQLite file and its -wal/-shm companions private (0600): a file created by
    someone else (``touch``, a 0644 umask) must not keep world-readable voiceprints. A file
    we may not chmod (owned by another user) is left as it is."""
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)
        except FileNotFoundError:
            continue
        except PermissionError as exc:
            log.warning("cannot make %s private: %s", candidate, exc.strerror or exc)


def _sqlite_engine(location: DatabaseLocation, read_only: bool) -> Engine:
    path = location.sqlite_path
    creator: Callable[[], sqlite3.Connection] | None = None
    if path is not None and read_only:
        creator = _sqlite_reader(path)
    elif path is not None:
        if path.exists() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            # Said plainly now, rather than "attempt to write a readonly database" later.
            raise StoreError(
                f"cannot write to database {path}: the file or its folder is read-only "
                "(commands that only read still work)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            tighten_permissions(path)
        except OSError as exc:
            raise StoreError(f"cannot create database file {path}: {exc.strerror or exc}") from None
    if path is not None:
        engine = create_engine(
            location.url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **({"creator": creator} if creator is not None else {}),
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
        if path is not None and not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Voiceprints are biometric data: deleted rows are overwritten, not just unlinked.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
        if path is not None and not read_only:
            # The first connection in WAL mode has just created -wal and -shm.
            tighten_permissions(path)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _sqlite_reader(path: Path) -> Callable[[], sqlite3.Connection]:
    """How to open an existing SQLite file without writing to it or leaving a file behind.

    * The file and its folder are writable, or another connection has the database open
      (its -wal/-shm files exist): a read-write connection with ``PRAGMA query_only``. No
      statement can change the database; SQLite uses the -shm file that is there, or makes
      its own and removes it on close like any connection. Without write permission SQLite
      opens the file read-only by itself and reads through the existing -shm.
    * Otherwise -- a read-only file, folder or file system, and nobody using the database:
      ``immutable=1``. SQLite then takes no locks and creates no -wal/-shm files (a
      ``mode=ro`` connection would create them in a writable folder and leave them behind).
      The trade-off: an immutable reader does not see a writer that starts meanwhile, and
      could read a page a checkpoint is rewriting. Only someone with write permission can
      start one, which a database kept read-only for its readers does not have; and it is
      never used when a write-ahead log holds committed pages the file lacks.

    Raises DatabaseNotFoundError when the file does not exist, NotASpeakerDBError when it is
    not SQLite, StoreError when it cannot be read at all.
    """
    if not path.exists():
        raise DatabaseNotFoundError(
            f"database {path} does not exist (nothing is enrolled there; enrolling creates it)"
        )
    target = "file:" + urllib.parse.quote(str(path))
    timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
    wal = path.with_name(path.name + "-wal")
    in_use = wal.exists() or path.with_name(path.name + "-shm").exists()
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    attempts: list[tuple[str, bool]] = []
    if in_use or writable:
        attempts.append(("mode=rw", True))
    if in_use:
        attempts.append(("mode=ro", False))
    if not (wal.exists() and wal.stat().st_size > 0):
        attempts.append(("immutable=1", False))
    last: sqlite3.Error | None = None
    for options, query_only in attempts:

        def connect(options: str = options, query_only: bool = query_only) -> sqlite3.Connection:
            conn = sqlite3.connect(
                f"{target}?{options}", uri=True, timeout=timeout, check_same_thread=False
            )
            if query_only:
                conn.execute("PRAGMA query_only=ON")
            return conn

        try:
            probe = connect()
            try:
                # Reading the schema opens the -shm file in WAL mode: fails here, not later.
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise NotASpeakerDBError(
                    f"{path} is not a speakerdb database (not SQLite)"
                ) from None
            last = exc
            continue
        return connect
    reason = f"{last}" if last is not None else "no way to read it"
    if wal.exists():
        reason += " (its write-ahead log needs a writable folder to be read)"
    raise StoreError(f"cannot read database {path}: {reason}")


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: takes SQLite's write lock at BEGIN. Commits on exit,
    rolls back on error."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """:func:`write_transaction` for migrations. On SQLite, foreign keys are off while it
    runs (a PRAGMA that only takes effect outside a transaction): a migration that rebuilds
    a table (``batch_alter_table``) drops the old one, and with them on, dropping
    ``speakers`` would cascade to every utterance."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if engine.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            conn = conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read transaction. SQLite: one snapshot for everything read inside it. PostgreSQL,
    at the server's default isolation level (READ COMMITTED): each statement sees every
    commit made before it began (its own snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def statement_reads(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no snapshot shared between their statements, only
    that each sees every commit made before it began. PostgreSQL: outside any transaction
    (autocommit), which saves the BEGIN and COMMIT round trips; at READ COMMITTED each
    statement of a transaction takes its own snapshot anyway, so they read exactly what
    they would read in :func:`read_transaction` (a read-only engine's sessions refuse
    writes in autocommit too). SQLite: :func:`read_transaction` (no round trips there)."""
    if engine.dialect.name != "postgresql":
        with read_transaction(engine) as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


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
    detail = mask_password(str(orig if orig is not None else exc)).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    if _retryable(exc):
        reason = f"other writers kept the database busy for over {RETRY_DEADLINE_S:.0f} s"
    return StoreError(f"{what}: {reason}")
