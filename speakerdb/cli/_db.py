"""``speakerdb db upgrade|check|rebuild-index|reindex|compact|reembed``: database maintenance."""

from __future__ import annotations

import sys
from typing import Any

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    db_option,
    device_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    open_db,
    show,
)
from speakerdb.cli._ray import ray_choice, ray_options
from speakerdb.errors import RecordingsMissingError


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
    from speakerdb.storage import upgrade_database

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
    type=click.Choice(["auto", "flat", "ivf", "ivfsq"]),
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


def _register_governance() -> None:
    from speakerdb.cli._retention import db_expire, db_set

    db.add_command(db_expire)
    db.add_command(db_set)


_register_governance()


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


@db.command("reembed")
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="NAME|PATH",
    help="The model to switch to: a built-in name (ge2e) or the path of a NeMo .nemo "
    "archive, a SpeechBrain model folder or a WeSpeaker ONNX file.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Switch even though some recordings are gone, changed or unusable: they are "
    "dropped, and speakers left without any recording are deleted.",
)
@click.option(
    "--drop-old",
    is_flag=True,
    help="Delete the vectors of other models (after the switch: the previous model's). "
    "Alone: drop them now.",
)
@click.option(
    "--commit-every",
    type=click.IntRange(1, 100_000),
    default=16,
    show_default=True,
    metavar="N",
    help="Recordings re-embedded per committed batch (an interrupted run redoes at most N).",
)
@ray_options(
    "Check and embed the recordings (read at the paths they were enrolled from); the "
    "batches are committed here as without it (a cluster needs a PostgreSQL --db)"
)
@db_option
@device_option
@json_option
@handles_errors
def db_reembed(
    model_name: str | None,
    allow_missing: bool,
    drop_old: bool,
    commit_every: int,
    ray_address: str | None,
    ray_workers: int | None,
    ray_files_per_task: int,
    db_url: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Switch the database to another model: re-embed every enrolled recording from the
    path it was enrolled from, then switch in one transaction.

    Recordings whose files are gone or whose audio changed are listed and nothing is
    switched (exit 2) unless --allow-missing. Interrupted, a rerun resumes (vectors already
    made are kept); until the switch the database keeps answering with its old model. The
    old model's vectors stay (switching back is then instant) until --drop-old. The
    calibrations were fitted on the old model's scores: they are reset, and decisions use
    the new model's default threshold (or its bundled calibration) until you calibrate.
    """
    with open_db(db_url, device=device) as handle:
        report = handle.reembed(
            model_name,
            allow_missing=allow_missing,
            drop_old=drop_old,
            progress=_committed_progress(),
            commit_every=commit_every,
            ray=ray_choice(ray_address, ray_workers, ray_files_per_task),
        )
    document = report.to_dict()
    error = None
    if report.status == "blocked":
        error = RecordingsMissingError(
            f"{len(report.missing)} recordings cannot be re-embedded: nothing switched "
            "(restore them, or pass --allow-missing to switch without them)"
        )
        document["error"] = error_object(error)
    if as_json:
        emit_json(document)
    else:
        _print_reembed(report)
    if error is not None:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(EXIT_ERROR)


def _committed_progress() -> Any:
    """Progress of a re-embedding on stderr: a bar on a terminal, else one line per
    committed batch (what a log, or a supervisor waiting for progress, can read)."""
    from speakerdb import ProgressBar

    bar = ProgressBar("re-embedding")

    def report(done: int, total: int) -> None:
        if bar.enabled:
            bar(done, total)
        else:
            click.echo(f"re-embedded {done} of {total} recordings (committed)", err=True)

    return report


def _print_reembed(report: Any) -> None:
    for item in report.missing:
        click.echo(f"{item.reason}: {show(item.speaker)}: {show(item.source)} ({item.message})")
    if report.status == "dropped":
        click.echo(f"dropped {report.old_vectors_dropped} vectors of other models")
        return
    if report.status == "blocked":
        click.echo(
            f"still on {report.previous_model}: {report.reembedded + report.reused} of "
            f"{report.recordings} recordings have vectors of {report.model} (kept for a rerun)"
        )
        return
    if report.status == "current":
        click.echo(f"{show(report.database)} already uses {report.model}")
    else:
        # Counted by the switching transaction: others may have enrolled or deleted meanwhile.
        gone = report.reembedded + report.reused - report.switched_recordings
        click.echo(
            f"switched {show(report.database)} from {report.previous_model} to {report.model}: "
            f"{report.switched_recordings} recordings "
            f"({report.reembedded} re-embedded now, {report.reused} made before"
            + (f"; {gone} of them of recordings deleted meanwhile" if gone > 0 else "")
            + ")"
        )
        if report.dropped_recordings:
            click.echo(f"dropped {report.dropped_recordings} recordings (--allow-missing)")
        for name in report.deleted_speakers:
            click.echo(f"deleted speaker {show(name)}: none of its recordings remained")
        if report.calibrations_reset:
            click.echo(
                "calibrations reset (fitted on the previous model): "
                + ", ".join(report.calibrations_reset)
            )
    if report.decision_rule:
        click.echo(f"decisions now: {report.decision_rule['text']}")
    if report.old_vectors_dropped:
        click.echo(f"dropped {report.old_vectors_dropped} vectors of other models")
    for label, count in report.old_vectors_kept.items():
        click.echo(f"kept {count} vectors of {label} (until --drop-old)")
