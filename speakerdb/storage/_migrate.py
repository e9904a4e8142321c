"""Schema versions, with Alembic shipped inside the package and configured in code.

A fresh database is created at the newest revision. A database at an older revision is left
alone and refused with the exact command that upgrades it; one at an unknown (newer)
revision is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from speakerdb.errors import SchemaOutOfDateError, StoreError
from speakerdb.storage._engine import write_transaction

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "SchemaStatus",
    "UpgradeResult",
    "alembic_config",
    "ensure_schema",
    "head_revision",
    "schema_status",
    "upgrade",
    "upgrade_database",
]

UPGRADE_COMMAND = "speakerdb db upgrade"
SCHEMA_HEAD = "0002"
"""The newest revision in ``speakerdb/migrations/versions`` (a test keeps the two equal).
Known without importing Alembic, which is only loaded to migrate."""
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_MIGRATION_LOCK = 0x5350_4B44_4200  # advisory lock key ("SPKDB"): one migrator at a time
_OUR_TABLES = {"models", "speakers", "utterances", "changes", "store_state"}


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic Config built in code; script_location is the package's own migrations folder."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return SCHEMA_HEAD


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


@dataclass(frozen=True)
class SchemaStatus:
    """``current`` revision (None: no speakerdb schema yet) and the ``head`` this code needs."""

    current: str | None
    head: str
    foreign_tables: bool = False

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def fresh(self) -> bool:
        return self.current is None and not self.foreign_tables


def schema_status(connection: Connection) -> SchemaStatus:
    tables = set(inspect(connection).get_table_names())
    current = None
    if "alembic_version" in tables:
        current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    foreign = current is None and bool(_OUR_TABLES & tables)
    return SchemaStatus(current=current, head=head_revision(), foreign_tables=foreign)


def _lock_for_migration(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other writers.


def _raise_if_unusable(status: SchemaStatus, where: str) -> None:
    if status.foreign_tables:
        raise StoreError(
            f"{where} has tables named like speakerdb's but no schema revision: "
            "it is not a speakerdb database"
        )
    if status.current is not None and status.current not in _known_revisions():
        raise SchemaOutOfDateError(
            f"{where} has schema revision {status.current}, which this speakerdb does not know "
            f"(it needs {status.head}): it was made by a newer speakerdb; upgrade speakerdb"
        )


def ensure_schema(engine: Engine, where: str) -> SchemaStatus:
    """Create the schema at head in a fresh database; refuse an outdated one.

    Raises SchemaOutOfDateError naming ``speakerdb db upgrade`` when the schema is behind.
    """
    with engine.connect() as probe:
        status = schema_status(probe)
        probe.rollback()
    if status.up_to_date:
        return status
    _raise_if_unusable(status, where)
    if not status.fresh:
        raise SchemaOutOfDateError(
            f"{where} has schema revision {status.current} but this speakerdb needs "
            f"{status.head}: run `{UPGRADE_COMMAND}` (add --db URL if it is not the default)"
        )
    return upgrade(engine, where, only_if_fresh=True)


def upgrade(engine: Engine, where: str, only_if_fresh: bool = False) -> SchemaStatus:
    """Upgrade to head under a migration lock (several processes may try at once).

    ``only_if_fresh``: create a fresh database, but leave an existing older one alone (another
    process may have created it meanwhile: then just check it).
    """
    with write_transaction(engine) as conn:
        _lock_for_migration(conn)
        status = schema_status(conn)
        _raise_if_unusable(status, where)
        if status.up_to_date:
            return status
        if only_if_fresh and not status.fresh:
            raise SchemaOutOfDateError(
                f"{where} has schema revision {status.current} but this speakerdb needs "
                f"{status.head}: run `{UPGRADE_COMMAND}`"
            )
        from alembic import command

        command.upgrade(alembic_config(conn), "head")
        return schema_status(conn)


@dataclass(frozen=True)
class UpgradeResult:
    """What :func:`upgrade_database` did: the database (password hidden) and its schema
    revision before (None: no speakerdb schema yet) and after."""

    database: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade_database(url: Any = None) -> UpgradeResult:
    """Upgrade the schema of the database at ``url`` (see ``resolve_location``) to this
    version of speakerdb, creating it when it does not exist. Safe to run from several
    processes at once. Raises ConfigurationError, StoreError (not a speakerdb database,
    unreachable), SchemaOutOfDateError (made by a newer speakerdb)."""
    from sqlalchemy.exc import SQLAlchemyError

    from speakerdb.storage._engine import create_database_engine, store_error
    from speakerdb.storage._location import resolve_location

    location = resolve_location(url)
    engine = create_database_engine(location)
    try:
        with engine.connect() as conn:
            before = schema_status(conn).current
            conn.rollback()
        after = upgrade(engine, location.display).current
    except SQLAlchemyError as exc:
        raise store_error(exc, f"cannot upgrade {location.display}") from None
    finally:
        engine.dispose()
    return UpgradeResult(location.display, before, after)
