"""``speakerdb watchlist add|list|remove``: the tenant's voices of known fraudsters."""

from __future__ import annotations

from pathlib import Path

import click

from speakerdb.cli._common import (
    db_option,
    device_option,
    emit_json,
    handles_errors,
    json_option,
    model_option,
    open_db,
    show,
)


@click.group()
def watchlist() -> None:
    """Known fraudsters' voices: every verify and identify of the tenant is also scored
    against them, and a match is decision KNOWN_FRAUDSTER (never accepted, never
    identified). Watchlisted voices are no speakers: never listed or identified as such."""


@watchlist.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_option
@device_option
@db_option
@json_option
@handles_errors
def watchlist_add(
    name: str,
    files: tuple[Path, ...],
    model_name: str | None,
    device: str | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Put NAME on the watchlist with a voiceprint of FILES (replacing an entry of that
    name)."""
    with open_db(db_url, model_name, device) as db:
        record = db.watchlist_add(name, [str(f) for f in files])
    if as_json:
        emit_json(record.to_dict())
        return
    click.echo(
        f"{show(record.name)}: on the watchlist, {record.utterances} recordings, "
        f"{record.speech_seconds:.1f} s of speech"
    )


@watchlist.command("list")
@db_option
@json_option
@handles_errors
def watchlist_list(db_url: str | None, as_json: bool) -> None:
    """List the watchlist: name, recordings, speech, when added."""
    with open_db(db_url, read_only=True) as db:
        records = db.watchlist()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    for r in records:
        click.echo(
            f"{show(r.name)}\t{r.utterances}\t{r.speech_seconds:.1f} s\t"
            f"{r.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    if not records:
        click.echo("the watchlist is empty", err=True)


@watchlist.command("remove")
@click.argument("name")
@db_option
@json_option
@handles_errors
def watchlist_remove(name: str, db_url: str | None, as_json: bool) -> None:
    """Take NAME off the watchlist."""
    with open_db(db_url) as db:
        db.watchlist_remove(name)
    if as_json:
        emit_json({"removed": name})
    else:
        click.echo(f"removed {show(name)} from the watchlist")
