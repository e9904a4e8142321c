"""Schema versions, with Alembic shipped inside the package and configured in code.

A fresh database -- one holding no table at all -- is created at the newest revision. A
database at an older revision is left alone and refused with the exact command that upgrades
it; one at an unknown (newer) revision is refused too. A database holding anything that is
not speakerdb's (another application's tables, another application's ``alembic_version``)
is refused and never written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from speakerdb.errors import DatabaseNotFoundError, NotASpeakerDBError, SchemaOutOfDateError
from speakerdb.storage._engine import migration_transaction

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
SCHEMA_HEAD = "0014"
"""The newest revision in ``speakerdb/migrations/versions`` (a test keeps the two equal).
Known without importing Alembic, which is only loaded to migrate."""
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_MIGRATION_LOCK = 0x5350_4B44_4200  # advisory lock key ("SPKDB"): one migrator at a time
# The tables of revision 0001: every speakerdb database has them, whatever its revision.
_OUR_TABLES = {"models", "speakers", "utterances", "changes", "store_state"}
_MAX_NAMED = 5


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
    """``current`` revision (None: no speakerdb schema) and the ``head`` this code needs.
    ``foreign`` says why the database is not speakerdb's (None when it is, or is empty)."""

    current: str | None
    head: str
    foreign: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def fresh(self) -> bool:
        """Nothing at all in the database: speakerdb may create its schema there."""
        return self.current is None and self.foreign is None


def _relations(connection: Connection) -> tuple[set[str], list[str]]:
    """(tables of the schema speakerdb uses, every table or view of the database by
    qualified name). SQLite's own ``sqlite_*`` tables do not count."""
    here = set(inspect(connection).get_table_names())
    if connection.dialect.name == "postgresql":
        rows = connection.execute(
            text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1"
            )
        ).scalars()
        return here, list(rows)
    rows = connection.execute(
        text(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY 1"
        )
    ).scalars()
    return here, list(rows)


def schema_status(connection: Connection) -> SchemaStatus:
    """Where the database stands. Only reads."""
    here, everything = _relations(connection)
    version: str | None = None
    if "alembic_version" in here:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if here >= _OUR_TABLES and version is not None:
        return SchemaStatus(current=version, head=head_revision())
    if not everything:
        return SchemaStatus(current=None, head=head_revision())
    if version is not None:
        why = f"its alembic_version (revision {version}) belongs to another application"
    elif here >= _OUR_TABLES:
        why = "it has tables named like speakerdb's but no schema revision"
    else:
        shown = ", ".join(everything[:_MAX_NAMED]) + (
            ", ..." if len(everything) > _MAX_NAMED else ""
        )
        why = f"it holds other tables ({shown})"
    return SchemaStatus(current=None, head=head_revision(), foreign=why)


def _lock_for_migration(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other writers.


def _raise_if_unusable(status: SchemaStatus, where: str) -> None:
    if status.foreign is not None:
        raise NotASpeakerDBError(
            f"{where} is not a speakerdb database: {status.foreign}; speakerdb leaves it "
            "untouched (use another --db)"
        )
    if status.current not in (None, status.head) and status.current not in _known_revisions():
        raise SchemaOutOfDateError(
            f"{where} has schema revision {status.current}, which this speakerdb does not know "
            f"(it needs {status.head}): it was made by a newer speakerdb; upgrade speakerdb"
        )


def ensure_schema(
    engine: Engine, where: str, read_only: bool = False, known: SchemaStatus | None = None
) -> SchemaStatus:
    """Create the schema at head in a fresh database; refuse an outdated or foreign one.

    ``read_only``: never create anything; a fresh database raises DatabaseNotFoundError.
    Raises SchemaOutOfDateError naming ``speakerdb db upgrade`` when the schema is behind,
    NotASpeakerDBError when the database holds another application's tables. ``known``:
    a status just read (by :func:`inspect_read_only`): an up-to-date one is not read again.
    """
    if known is not None and known.up_to_date:
        return known
    with engine.connect() as probe:
        status = schema_status(probe)
        probe.rollback()
    if status.up_to_date:
        return status
    _raise_if_unusable(status, where)
    if status.fresh and read_only:
        raise DatabaseNotFoundError(
            f"{where} holds no speakerdb database yet (nothing is enrolled there; enrolling "
            "creates it)"
        )
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
    with migration_transaction(engine) as conn:
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
        if status.fresh:
            # A database created now decides with the model's bundled calibration; one that
            # existed before keeps its behaviour (revision 0004 sets "none") until opted in.
            conn.execute(text("UPDATE store_state SET calibration_default = 'bundled'"))
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
    processes at once. Raises ConfigurationError, NotASpeakerDBError (another application's
    database: left untouched), StoreError (unreachable), SchemaOutOfDateError (made by a
    newer speakerdb)."""
    from sqlalchemy.exc import SQLAlchemyError

    from speakerdb.storage._engine import create_database_engine, store_error
    from speakerdb.storage._location import resolve_location

    location = resolve_location(url)
    if location.sqlite_path is not None and location.sqlite_path.exists():
        inspect_read_only(location)  # another application's file is refused before any write
    engine = create_database_engine(location)
    try:
        with engine.connect() as conn:
            status = schema_status(conn)
            conn.rollback()
        _raise_if_unusable(status, location.display)
        before = status.current
        after = upgrade(engine, location.display).current
    except SQLAlchemyError as exc:
        raise store_error(exc, f"cannot upgrade {location.display}") from None
    finally:
        engine.dispose()
    return UpgradeResult(location.display, before, after)


def inspect_read_only(location: Any) -> SchemaStatus:
    """The schema status of an existing database, read through a read-only engine (a SQLite
    file is not even switched to WAL mode). Raises NotASpeakerDBError for another
    application's database, SchemaOutOfDateError for one of a newer speakerdb."""
    from sqlalchemy.exc import SQLAlchemyError

    from speakerdb.storage._engine import create_database_engine, store_error

    engine = create_database_engine(location, read_only=True)
    try:
        with engine.connect() as conn:
            status = schema_status(conn)
            conn.rollback()
    except SQLAlchemyError as exc:
        raise store_error(exc, f"cannot read {location.display}") from None
    finally:
        engine.dispose()
    _raise_if_unusable(status, location.display)
    return status
