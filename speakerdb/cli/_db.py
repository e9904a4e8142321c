"""``speakerdb db upgrade|check|rebuild-index|reindex|compact``: database maintenance."""

from __future__ import annotations

import sys

import click

from speakerdb.cli._common import (
    EXIT_NO,
    EXIT_OK,
    db_option,
    emit_json,
    handles_errors,
    json_option,
    open_db,
    show,
)


@click.group()
def db() -> None:
    """Database maintenance: upgrade the schema, check consistency, rebuild the index,
    erase deleted voiceprints for good."""


@db.command("upgrade")
@db_option
@json_option
@handles_errors
def db_upgrade(db_url: str | None, as_json: bool) -> None:
    """Upgrade the database schema to this version of speakerdb (creates a fresh one)."""
    from speakerdb.storage._migrate import upgrade_database

    result = upgrade_database(db_url)
    if as_json:
        emit_json({"database": result.database, "from": result.before, "to": result.after})
    elif not result.changed:
        click.echo(f"{show(result.database)}: already at revision {result.after}")
    else:
        click.echo(
            f"{show(result.database)}: upgraded from {result.before or 'nothing'} "
            f"to revision {result.after}"
        )


@db.command("check")
@db_option
@json_option
@handles_errors
def db_check(db_url: str | None, as_json: bool) -> None:
    """Check the database: counts, schema, model, and the index against SQL.

    Exit 0 when consistent, 1 when not. Only reads the database.
    """
    with open_db(db_url, read_only=True) as handle:
        report = handle.check()
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"database:   {show(handle.store.location.display)}")
        click.echo(f"revision:   {report.revision} (this speakerdb: {report.head_revision})")
        click.echo(f"model:      {report.model['label'] if report.model else 'none yet'}")
        click.echo(f"speakers:   {report.speakers}")
        click.echo(f"recordings: {report.utterances}")
        if report.index:
            click.echo(
                "index:      "
                + ", ".join(f"{k} {v}" for k, v in report.index.items() if v is not None)
            )
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo("consistent" if report.consistent else "NOT consistent")
    sys.exit(EXIT_OK if report.consistent else EXIT_NO)


@db.command("rebuild-index")
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf"]),
    default=None,
    help="Force an index kind (stored in the database); default: keep the current setting.",
)
@db_option
@json_option
@handles_errors
def db_rebuild_index(kind: str | None, db_url: str | None, as_json: bool) -> None:
    """Rebuild the vector index from SQL and write its file."""
    with open_db(db_url) as handle:
        status = handle.rebuild_index(kind)
    if as_json:
        emit_json(status.__dict__)
    else:
        click.echo(
            f"rebuilt {status.params} index of {status.vectors} speakers "
            f"at {show(status.path or 'memory')}"
        )


db.add_command(db_rebuild_index, "reindex")


@db.command("compact")
@db_option
@json_option
@handles_errors
def db_compact(db_url: str | None, as_json: bool) -> None:
    """Erase deleted speakers' voiceprints from the database files for good, and shrink them.

    PostgreSQL keeps deleted rows in its table files (and its write-ahead log) until they are
    rewritten: this runs VACUUM FULL on the tables holding voiceprints, which locks them
    (other commands wait) while it runs. SQLite zeroes deleted rows at once; this runs VACUUM
    to give the space back.
    """
    with open_db(db_url) as handle:
        result = handle.compact()
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"compacted {show(result.database)}: {result.before_bytes} -> "
            f"{result.after_bytes} bytes"
        )
