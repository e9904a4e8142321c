"""Alembic environment of speakerdb. Runs online only, on the connection speakerdb hands over
in ``config.attributes["connection"]`` (see speakerdb.storage._migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from speakerdb.storage._schema import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("speakerdb migrations run through `speakerdb db upgrade`")
    with create_engine(url).begin() as conn:
        _run(conn)
