"""``speakerdb speakers list|show|rename|delete``."""

from __future__ import annotations

import json
import sys

import click

from speakerdb.cli._common import db_option, emit_json, handles_errors, json_option, open_db, show
from speakerdb.errors import UsageError


@click.group()
def speakers() -> None:
    """List, show, rename, delete and opt out enrolled speakers."""


@speakers.command("list")
@db_option
@json_option
@handles_errors
def speakers_list(db_url: str | None, as_json: bool) -> None:
    """List enrolled speakers with their number of recordings."""
    with open_db(db_url, read_only=True) as db:
        records = db.speakers()
    if as_json:
        emit_json([r.to_dict() | {"utterances": r.utterances} for r in records])
        return
    for r in records:
        expiry = f"expires {r.expires_at:%Y-%m-%d}" if r.expires_at else "no expiry"
        consent = "consent recorded" if r.consent else "no consent recorded"
        click.echo(
            f"{show(r.name)}\t{r.utterances} recordings\t{r.speech_seconds:.1f} s speech\t"
            f"{expiry}\t{consent}"
        )
    if not records:
        click.echo("no speakers enrolled", err=True)


@speakers.command("show")
@click.argument("name")
@db_option
@json_option
@handles_errors
def speakers_show(name: str, db_url: str | None, as_json: bool) -> None:
    """Show one speaker, with every enrolled recording."""
    with open_db(db_url, read_only=True) as db:
        record = db.speaker(name)
        recordings = db.utterances(name)
    if as_json:
        emit_json(record.to_dict() | {"recordings": [u.to_dict() for u in recordings]})
        return
    click.echo(f"{show(record.name)} (id {record.id}, {record.status})")
    click.echo(
        f"  enrolled {record.created_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"updated {record.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    bandwidth = (
        f"bandwidth {record.bandwidth_hz / 1000:.1f} kHz"
        if record.bandwidth_hz is not None
        else "bandwidth unknown (enrolled before schema 0004: decided on cosine scores)"
    )
    click.echo(
        f"  {record.utterances} recordings, {record.speech_seconds:.1f} s of speech, {bandwidth}"
    )
    if record.expires_at is not None:
        click.echo(f"  expires {record.expires_at:%Y-%m-%d %H:%M:%S} UTC (speakerdb db expire)")
    if record.consent is not None and record.consent_at is not None:
        click.echo(
            f"  consent: {show(record.consent)} (recorded "
            f"{record.consent_at:%Y-%m-%d %H:%M:%S} UTC by {show(record.consent_by or '?')})"
        )
    if record.metadata:
        click.echo(f"  metadata: {json.dumps(record.metadata, ensure_ascii=False)}")
    elif record.metadata_error:
        click.echo(f"  metadata: not shown ({record.metadata_error})")
    for u in recordings:
        source = show(u.source) if u.source else "<array>"
        khz = f"{u.bandwidth_hz / 1000:.1f} kHz" if u.bandwidth_hz is not None else "? kHz"
        click.echo(f"  - {source}  {u.speech_seconds:.1f} s  {khz}  sha256 {u.sha256[:12]}")


@speakers.command("rename")
@click.argument("old")
@click.argument("new")
@db_option
@json_option
@handles_errors
def speakers_rename(old: str, new: str, db_url: str | None, as_json: bool) -> None:
    """Rename speaker OLD to NEW (the voiceprint is kept)."""
    with open_db(db_url) as db:
        record = db.rename(old, new)
    if as_json:
        emit_json(record.to_dict())
    else:
        click.echo(f"renamed {show(old)} to {show(record.name)}")


@speakers.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@json_option
@handles_errors
def speakers_delete(name: str, yes: bool, db_url: str | None, as_json: bool) -> None:
    """Delete speaker NAME and every voiceprint of it (SQL rows and index)."""
    with open_db(db_url) as db:
        db.speaker(name)  # not found -> error before asking
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"refusing to delete {name!r} without --yes (no terminal to ask)")
            click.confirm(f"Delete speaker {name!r} and all its voiceprints?", abort=True)
        record = db.delete(name)
    if as_json:
        emit_json({"deleted": record.to_dict()})
    else:
        click.echo(f"deleted {show(record.name)} ({record.utterances} recordings)")


@speakers.command("opt-out")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-compact", is_flag=True, help="Skip compacting the database files afterwards.")
@db_option
@json_option
@handles_errors
def speakers_opt_out(
    name: str, yes: bool, no_compact: bool, db_url: str | None, as_json: bool
) -> None:
    """Erase NAME like delete and refuse the name at enrollment until 'speakers opt-in':
    only a keyed hash of the name is kept, never the voice."""
    with open_db(db_url) as db:
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"refusing to opt out {name!r} without --yes (no terminal)")
            click.confirm(f"Erase {name!r} and refuse the name from now on?", abort=True)
        erased = db.opt_out(name, compact=not no_compact)
    if as_json:
        emit_json({"opted_out": name, "erased": erased})
    else:
        what = "erased and opted out" if erased else "opted out (nothing was enrolled)"
        click.echo(f"{show(name)} {what}")


@speakers.command("opt-in")
@click.argument("name")
@db_option
@json_option
@handles_errors
def speakers_opt_in(name: str, db_url: str | None, as_json: bool) -> None:
    """Lift the opt-out of NAME: it may be enrolled again (an administrator's decision)."""
    with open_db(db_url) as db:
        db.opt_in(name)
    if as_json:
        emit_json({"opted_in": name})
    else:
        click.echo(f"{show(name)} may be enrolled again")
