"""``speakerdb keys create|list|revoke``: API keys of ``speakerdb serve``."""

from __future__ import annotations

import click

from speakerdb.cli._common import db_option, emit_json, handles_errors, json_option, open_db, show

_SCOPE_HELP = (
    "What the key may do (repeatable, or comma-separated): verify (verify, compare, list "
    "and show speakers), identify (identify, list and show speakers), read (= verify + "
    "identify), enroll, audit (read the audit log), admin (everything: delete, rename, keys, "
    "the audit log)."
)


@click.group()
def keys() -> None:
    """API keys of the HTTP service: only their sha256 is stored; a key is shown once."""


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, help=_SCOPE_HELP)
@db_option
@json_option
@handles_errors
def keys_create(name: str, scopes: tuple[str, ...], db_url: str | None, as_json: bool) -> None:
    """Create key NAME and print it -- the only time it is shown (stdout: the key alone,
    so that KEY=$(speakerdb keys create ...) works; stderr: what it is)."""
    with open_db(db_url) as db:
        made = db.create_key(name, scopes)
    if as_json:
        emit_json(made.record.to_dict() | {"key": made.secret})
        return
    click.echo(
        f"created API key {show(made.record.name)} (scopes: {', '.join(made.record.scopes)}); "
        "it is shown only now, store it safely:",
        err=True,
    )
    click.echo(made.secret)


@keys.command("list")
@db_option
@json_option
@handles_errors
def keys_list(db_url: str | None, as_json: bool) -> None:
    """List keys: name, first characters, scopes, creation time (never the secret)."""
    with open_db(db_url, read_only=True) as db:
        records = db.api_keys()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    for r in records:
        click.echo(
            f"{show(r.name)}\t{r.prefix}...\t{','.join(r.scopes)}\t"
            f"{r.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    if not records:
        click.echo("no API keys", err=True)


@keys.command("revoke")
@click.argument("name")
@db_option
@json_option
@handles_errors
def keys_revoke(name: str, db_url: str | None, as_json: bool) -> None:
    """Revoke key NAME: every server refuses it from its next request on."""
    with open_db(db_url) as db:
        record = db.revoke_key(name)
    if as_json:
        emit_json({"revoked": record.to_dict()})
    else:
        click.echo(f"revoked API key {show(record.name)}")


@keys.command("allow-keyless")
@db_option
@handles_errors
def keys_allow_keyless(db_url: str | None) -> None:
    """Let `speakerdb serve` on a loopback address answer without keys again. Once a key
    was created, servers require keys even after every key is revoked; this undoes that,
    and is refused while any key exists. Not available over HTTP."""
    with open_db(db_url) as db:
        db.allow_keyless()
    click.echo(
        "no API key is required any more: a server on a loopback address answers without "
        "authentication until a key is created",
        err=True,
    )
