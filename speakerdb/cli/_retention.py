"""``speakerdb db expire`` and ``speakerdb db set``: retention and database settings."""

from __future__ import annotations

import click

from speakerdb.cli._common import db_option, emit_json, handles_errors, json_option, open_db, show
from speakerdb.errors import UsageError


@click.command("expire")
@click.option("--no-compact", is_flag=True, help="Skip compacting the database files afterwards.")
@click.option(
    "--all-tenants", is_flag=True, help="Expire the speakers of every tenant, not one's own."
)
@db_option
@json_option
@handles_errors
def db_expire(no_compact: bool, all_tenants: bool, db_url: str | None, as_json: bool) -> None:
    """Erase every speaker of the tenant (--all-tenants: of every tenant) whose retention
    period (enroll --expires-after) has ended, as 'speakers delete' does, with an audit
    entry each in its tenant's log; then compact the database files so that no byte of
    them is left (VACUUM FULL on PostgreSQL, VACUUM on SQLite)."""
    with open_db(db_url) as handle:
        names = handle.expire(compact=not no_compact, all_tenants=all_tenants)
    if as_json:
        emit_json({"expired": names})
        return
    for name in names:
        click.echo(f"expired {show(name)}")
    if not names:
        click.echo("no speaker has expired", err=True)


@click.command("set")
@click.argument("setting", type=click.Choice(["require-consent", "default-expires-after"]))
@click.argument("value")
@db_option
@json_option
@handles_errors
def db_set(setting: str, value: str, db_url: str | None, as_json: bool) -> None:
    """Change a setting of the tenant. require-consent on|off: every enrollment of a new
    speaker in the tenant must record consent (enroll --consent TEXT), or it is refused.
    default-expires-after PERIOD|off: a new speaker enrolled without --expires-after expires
    PERIOD after its enrollment (3y, 90d, 2w, 12h; e.g. BIPA's 3-year cap: 3y)."""
    if setting == "require-consent" and value not in ("on", "off"):
        raise UsageError(f"require-consent takes on or off, not {value!r}")
    with open_db(db_url) as handle:
        if setting == "require-consent":
            handle.set_require_consent(value == "on")
            now = handle.require_consent()
            document: dict[str, object] = {"require_consent": now}
            text = f"require-consent is {'on' if now else 'off'}"
        else:
            handle.set_default_retention(None if value == "off" else value)
            period = handle.default_retention()
            document = {"default_expires_after": period}
            text = f"default-expires-after is {period or 'off'}"
    if as_json:
        emit_json(document)
    else:
        click.echo(text)
