"""Giving back the bytes of deleted voiceprints: VACUUM of SQLite files and VACUUM FULL of
PostgreSQL's vector tables, and the write-ahead-log checkpoint that follows a delete.

Each runs outside any transaction (VACUUM cannot run inside one). Raises SQLAlchemyError;
the store translates it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from speakerdb.storage._records import CompactResult

__all__ = ["checkpoint_wal", "compact_postgresql", "compact_sqlite"]

_VECTOR_TABLES = ("utterances", "reembeddings", "speakers", "watchlist")


def compact_sqlite(engine: Engine, path: Path, display: str) -> CompactResult:
    """VACUUM the SQLite file at ``path`` and truncate its write-ahead log; sizes in bytes
    (the file and its ``-wal`` companion) before and after."""

    def size() -> int:
        companions = [path, path.with_name(path.name + "-wal")]
        return sum(p.stat().st_size for p in companions if p.exists())

    before = size()
    raw = engine.raw_connection()
    try:
        # VACUUM cannot run inside a transaction: the DBAPI connection is in autocommit
        # mode (isolation_level None, see the engine), so it runs on its own.
        cursor = raw.cursor()
        cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        raw.close()
    return CompactResult(display, before, size())


def compact_postgresql(engine: Engine, display: str) -> CompactResult:
    """VACUUM FULL the tables holding vectors (locks them while it runs); their total
    relation sizes in bytes before and after."""

    def size(conn: Connection) -> int:
        return int(
            sum(
                conn.execute(
                    text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": t}
                ).scalar_one()
                for t in _VECTOR_TABLES
            )
        )

    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        before = size(conn)
        for table in _VECTOR_TABLES:
            conn.exec_driver_sql(f'VACUUM (FULL, ANALYZE) "{table}"')
        after = size(conn)
    return CompactResult(display, before, after)


def checkpoint_wal(engine: Engine) -> None:
    """Checkpoint and truncate SQLite's write-ahead log, so pages a delete freed (zeroed by
    ``secure_delete``) leave the log too; a reader blocking it leaves it to the next one."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    except SQLAlchemyError:
        pass  # readers may block the checkpoint; the next one completes it
