"""Retention, consent and opt-out inside the store's write transactions.

* Retention: ``speakers.expires_at``; ``speakerdb db expire`` erases every speaker past it
  through :func:`erase_speaker`, the one erase path delete and opt-out also take.
* Consent: the text given at enrollment, when, and by whom (the audit actor: an API key's
  name or the OS user); ``tenants.require_consent`` makes it compulsory for every new
  speaker.
* Opt-out: the speaker is erased and only HMAC-SHA256(``store_state.name_key``, the name
  normalised and case-folded) is kept in ``opt_outs``; enrolling a name with that digest is
  refused until an administrator lifts it. Without the key (in the database) the digests
  cannot be tested against a list of names.

None of these opens a transaction: each runs in the caller's, with ``store_state`` locked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Row

from speakerdb.errors import ConsentRequiredError, OptedOutError, UsageError
from speakerdb.storage._audit import current_actor
from speakerdb.storage._names import canonical_name
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._rows import record_change
from speakerdb.storage._schema import OptOut, Speaker, StoreState, Tenant, Utterance

__all__ = [
    "MAX_CONSENT",
    "add_opt_out",
    "check_enrollable",
    "consent_values",
    "erase_speaker",
    "expires_at_after",
    "name_hmac",
    "opted_out",
    "parse_duration",
    "remove_opt_out",
    "with_default_retention",
]

MAX_CONSENT = 2000  # characters of consent text
_DURATION = re.compile(r"^\s*(\d+)\s*(y|w|d|h)\s*$", re.IGNORECASE)
_UNIT_DAYS = {"y": 365.0, "w": 7.0, "d": 1.0, "h": 1.0 / 24.0}


def parse_duration(text: str | dt.timedelta) -> dt.timedelta:
    """``"3y"``, ``"90d"``, ``"2w"``, ``"12h"`` (a year is 365 days) or a timedelta, as a
    positive timedelta. Raises UsageError."""
    if isinstance(text, dt.timedelta):
        if text <= dt.timedelta(0):
            raise UsageError("a retention period must be positive")
        return text
    found = _DURATION.match(str(text))
    if found is None or int(found.group(1)) == 0:
        raise UsageError(
            f"retention period must be a positive number and a unit y, w, d or h (3y, 90d), "
            f"not {text!r}"
        )
    return dt.timedelta(days=int(found.group(1)) * _UNIT_DAYS[found.group(2).lower()])


def expires_at_after(period: str | dt.timedelta | None, now: dt.datetime) -> dt.datetime | None:
    return None if period is None else now + parse_duration(period)


def _name_key(conn: Connection) -> bytes:
    key = conn.execute(select(StoreState.name_key).where(StoreState.id == 1)).scalar()
    if key is None:  # pragma: no cover - revision 0011 gives every database its key
        key = secrets.token_hex(32)
        conn.execute(update(StoreState).where(StoreState.id == 1).values(name_key=key))
    return bytes.fromhex(key)


def name_hmac(conn: Connection, name: str) -> str:
    """The keyed digest an opted-out name is kept as (normalised and case-folded, so that
    "Alice" and "alice" are one person's name)."""
    normal = canonical_name(name).casefold().encode("utf-8", "surrogatepass")
    return hmac.new(_name_key(conn), normal, hashlib.sha256).hexdigest()


def opted_out(conn: Connection, tenant_id: int | None, names: Sequence[str]) -> set[str]:
    """Those of ``names`` that are opted out in tenant ``tenant_id``."""
    if not names or tenant_id is None:
        return set()
    digests = {name_hmac(conn, n): n for n in names}
    found = conn.execute(
        select(OptOut.name_hmac).where(
            OptOut.tenant_id == tenant_id, OptOut.name_hmac.in_(list(digests))
        )
    )
    return {digests[d] for d in found.scalars()}


def check_enrollable(
    conn: Connection, tenant_id: int, requests: Sequence[EnrollRequest], existing: set[str]
) -> None:
    """Raise OptedOutError when a request's name is opted out, ConsentRequiredError when
    the tenant requires consent and a new speaker comes without it."""
    blocked = opted_out(conn, tenant_id, [r.name for r in requests])
    if blocked:
        name = sorted(blocked)[0]
        raise OptedOutError(
            f"{name!r} was opted out and cannot be enrolled (an administrator can lift it: "
            "speakerdb speakers opt-in NAME)"
        )
    required = conn.execute(select(Tenant.require_consent).where(Tenant.id == tenant_id)).scalar()
    if required:
        missing = sorted(r.name for r in requests if r.name not in existing and not r.consent)
        if missing:
            raise ConsentRequiredError(
                f"this database requires consent for every enrollment: none given for "
                f"{missing[0]!r} (--consent TEXT)"
            )


def with_default_retention(
    conn: Connection,
    tenant_id: int,
    requests: Sequence[EnrollRequest],
    existing: set[str],
    now: dt.datetime,
) -> list[EnrollRequest]:
    """``requests`` with the tenant's default retention (``tenants.default_retention``) as
    the expiry of every new speaker enrolled without one; the others as they are."""
    period = conn.execute(select(Tenant.default_retention).where(Tenant.id == tenant_id)).scalar()
    if not period:
        return list(requests)
    expires_at = now + parse_duration(period)
    return [
        dataclasses.replace(r, expires_at=expires_at)
        if r.expires_at is None and r.name not in existing
        else r
        for r in requests
    ]


def check_consent_text(consent: str | None) -> str | None:
    if consent is None:
        return None
    text = str(consent).strip()
    if not text or len(text) > MAX_CONSENT:
        raise UsageError(f"consent must be 1-{MAX_CONSENT} characters of text")
    return text


def consent_values(request: EnrollRequest, now: dt.datetime) -> dict[str, Any]:
    """The speaker columns a request sets: expiry and consent when given, nothing else."""
    values: dict[str, Any] = {}
    if request.expires_at is not None:
        values["expires_at"] = request.expires_at
    if request.consent is not None:
        values.update(consent=request.consent, consent_at=now, consent_by=current_actor()[0])
    return values


def erase_speaker(conn: Connection, speaker_id: int, seq: int) -> None:
    """THE erase path (delete, expiry, opt-out): the utterances (and with them, by cascade,
    their re-embeddings), the speaker row with its centroid, and a "delete" in the change
    log so that every index cache drops the vector. The caller then erases the traces on
    disk (index files, SQLite's log; see ``StoreConnection.erase_traces``)."""
    conn.execute(delete(Utterance).where(Utterance.speaker_id == speaker_id))
    conn.execute(delete(Speaker).where(Speaker.id == speaker_id))
    record_change(conn, speaker_id, seq, "delete")


def expired(conn: Connection, now: dt.datetime, tenant_id: int | None) -> list[Row[Any]]:
    """(id, name, tenant_id) of the speakers of tenant ``tenant_id`` (None: of every
    tenant) whose retention ended by ``now``, locked."""
    query = select(Speaker.id, Speaker.name, Speaker.tenant_id).where(
        Speaker.expires_at.is_not(None), Speaker.expires_at <= now
    )
    if tenant_id is not None:
        query = query.where(Speaker.tenant_id == tenant_id)
    rows: list[Row[Any]] = []
    rows.extend(conn.execute(query.order_by(Speaker.tenant_id, Speaker.name).with_for_update()))
    return rows


def add_opt_out(conn: Connection, tenant_id: int, name: str, now: dt.datetime) -> str:
    """Record the name's digest in the tenant (once); returns it."""
    digest = name_hmac(conn, name)
    exists = conn.execute(
        select(OptOut.name_hmac).where(OptOut.tenant_id == tenant_id, OptOut.name_hmac == digest)
    ).first()
    if exists is None:
        conn.execute(insert(OptOut).values(tenant_id=tenant_id, name_hmac=digest, created_at=now))
    return digest


def remove_opt_out(conn: Connection, tenant_id: int | None, name: str) -> str | None:
    """Lift the name's opt-out in the tenant; returns its digest, or None when it was not
    opted out."""
    if tenant_id is None:
        return None
    digest = name_hmac(conn, name)
    gone = conn.execute(
        delete(OptOut).where(OptOut.tenant_id == tenant_id, OptOut.name_hmac == digest)
    ).rowcount
    return digest if gone else None
