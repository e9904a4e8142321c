"""``speakerdb audit list|verify``: the database's hash-chained audit log."""

from __future__ import annotations

import datetime as dt

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
from speakerdb.errors import UsageError


@click.group()
def audit() -> None:
    """The audit log: who enrolled, looked up, renamed or deleted whom, and key and
    calibration changes; one hash-chained entry each (never audio, voiceprints or paths)."""


def _since(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since must be an ISO 8601 date or time, not {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


@audit.command("list")
@click.option("--since", help="Only entries at or after this ISO 8601 time (default zone UTC).")
@click.option("--speaker", help="Only entries about this speaker (its name at the time).")
@click.option(
    "--action",
    help="Only this action: enroll, verify, identify, compare, rename, delete, key-create, "
    "key-revoke, calibration.",
)
@click.option("--limit", type=int, help="Only the last N entries.")
@db_option
@json_option
@handles_errors
def audit_list(
    since: str | None,
    speaker: str | None,
    action: str | None,
    limit: int | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """List audit entries, oldest first: seq, time, actor, action, speaker, decision,
    score, request id."""
    with open_db(db_url, read_only=True) as db:
        entries = db.audit_entries(_since(since), speaker, action, limit)
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return
    for e in entries:
        score = f"{e.score:.4f}" if e.score is not None else "-"
        click.echo(
            f"{e.seq}\t{e.at:%Y-%m-%d %H:%M:%S} UTC\t{show(e.actor)}\t{e.action}\t"
            f"{show(e.speaker) if e.speaker is not None else '-'}\t{e.decision or '-'}\t"
            f"{score}\t{e.request_id or '-'}"
        )
    if not entries:
        click.echo("no audit entries", err=True)


@audit.command("verify")
@db_option
@json_option
@handles_errors
def audit_verify(db_url: str | None, as_json: bool) -> int:
    """Check the hash chain: exit 0 when every entry is as written, 1 naming the first
    entry modified, deleted, inserted or reordered. Prints the head hash: kept elsewhere,
    it also reveals a rewrite of the whole log."""
    with open_db(db_url, read_only=True) as db:
        check = db.audit_verify()
    if as_json:
        emit_json(check.to_dict())
    elif check.ok:
        click.echo(f"audit log intact: {check.entries} entries, head {check.head_hash}")
    else:
        click.echo(f"audit log broken at entry {check.bad_seq}: {check.problem}")
    return EXIT_OK if check.ok else EXIT_NO
