"""The audit log: one append-only, hash-chained entry per enrollment, lookup, rename, delete,
API key change and calibration change.

An entry holds the time, the actor (an API key's name through the HTTP service, else the OS
user unless the caller names one with :func:`acting_as`), the action, the target speaker,
the decision and score, the request id and a few small facts (``detail``). Never audio,
embeddings, file paths or key secrets.

Chain: each tenant has its own chain, numbered from 1. Entry ``n`` stores ``hash =
sha256(prev_hash || canonical JSON of its fields)`` with ``prev_hash`` the hash of entry
``n - 1`` (64 zeros for the first); the fields include the tenant's id except for the
default tenant (id 1), whose entries hash as they did before tenants existed. The tenant's
``audit_head`` row holds the last ``seq`` and hash; every append locks it (PostgreSQL: a
row lock; SQLite: the write lock of ``BEGIN IMMEDIATE``), so concurrent writers queue
instead of forking the chain. Changes append inside their own transaction (:func:`append`, called
last, with the change's locks already held); lookups append in a small transaction of their
own after the decision.

Tamper evidence, not tamper proof: whoever can write the database can rewrite the whole
chain and its head. ``audit verify`` prints the head hash so an operator can record it
elsewhere and later check the log still leads to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import getpass
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from speakerdb.errors import UsageError
from speakerdb.storage._records import EnrollResult
from speakerdb.storage._schema import AuditEntryRow, AuditHead, Tenant, utcnow

__all__ = [
    "AUDIT_ACTIONS",
    "ZERO_HASH",
    "AuditCheck",
    "AuditEntry",
    "PendingEntry",
    "acting_as",
    "append",
    "check_chain",
    "current_actor",
    "enroll_entry",
    "entry_hash",
    "lookups_are_recorded",
    "lookups_unrecorded",
    "read_entries",
]

ZERO_HASH = "0" * 64
AUDIT_ACTIONS = (
    "enroll",
    "verify",
    "identify",
    "compare",
    "rename",
    "delete",
    "key-create",
    "key-revoke",
    "calibration",
    "expire",
    "opt-out",
    "opt-in",
    "setting",
    "evaluate",
    "watchlist-add",
    "watchlist-remove",
)
_MAX_ACTOR = 128
_MAX_REQUEST_ID = 64

_UNRECORDED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "speakerdb_audit_unrecorded", default=False
)


@contextlib.contextmanager
def lookups_unrecorded() -> Iterator[None]:
    """Inside, lookups write no entry of their own: an evaluation over a trial list records
    one ``evaluate`` entry for the run, not one ``verify`` entry per trial."""
    token = _UNRECORDED.set(True)
    try:
        yield
    finally:
        _UNRECORDED.reset(token)


def lookups_are_recorded() -> bool:
    """False inside :func:`lookups_unrecorded`."""
    return not _UNRECORDED.get()


_ACTING: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "speakerdb_audit_actor", default=(None, None)
)


@contextlib.contextmanager
def acting_as(actor: str | None, request_id: str | None = None) -> Iterator[None]:
    """``with acting_as("alice", "req-42"):`` everything this thread (or task) does inside
    is audited as done by ``actor`` for request ``request_id``. actor None: the OS user.
    Raises UsageError for an actor longer than 128 or a request id longer than 64
    characters, or one with control characters."""
    for what, value, most in (
        ("actor", actor, _MAX_ACTOR),
        ("request id", request_id, _MAX_REQUEST_ID),
    ):
        if value is not None and (
            len(value) > most or not value.isprintable() or not value.strip()
        ):
            raise UsageError(f"audit {what} must be 1-{most} printable characters")
    token = _ACTING.set((actor, request_id))
    try:
        yield
    finally:
        _ACTING.reset(token)


def current_actor() -> tuple[str, str | None]:
    """(actor, request id) for the entries written now (see :func:`acting_as`)."""
    actor, request_id = _ACTING.get()
    if actor is None:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):  # no user name in this environment (a bare container)
            actor = "unknown"
    return actor[:_MAX_ACTOR], request_id


@dataclass(frozen=True)
class PendingEntry:
    """What a change or lookup records; the actor, time and chain are added by
    :func:`append`. ``detail``: small JSON-able facts (no paths, no secrets)."""

    action: str
    speaker: str | None = None
    decision: str | None = None
    score: float | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One stored entry. ``at`` is UTC; ``score`` is the score the decision used."""

    seq: int
    at: dt.datetime
    actor: str
    action: str
    speaker: str | None
    decision: str | None
    score: float | None
    request_id: str | None
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str
    tenant: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "speaker": self.speaker,
            "decision": self.decision,
            "score": self.score,
            "request_id": self.request_id,
            "detail": self.detail,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AuditCheck:
    """What :func:`check_chain` found. ``ok``: the chain is whole; otherwise ``bad_seq`` is
    the first entry that does not fit and ``problem`` says how. ``head_hash``: the hash the
    log leads to (record it elsewhere to detect a rewrite of the whole log)."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "bad_seq": self.bad_seq,
            "problem": self.problem,
        }


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _canonical_detail(detail: dict[str, Any] | None) -> str | None:
    if detail is None:
        return None
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    prev_hash: str,
    seq: int,
    at: dt.datetime,
    actor: str,
    action: str,
    speaker: str | None,
    decision: str | None,
    score: float | None,
    request_id: str | None,
    detail: str | None,
    tenant_id: int = 1,
) -> str:
    """sha256(prev_hash || canonical JSON of the fields), hex. ``at`` is normalised to UTC
    microseconds, so the hash is the same whichever database returned the row. The tenant
    is a field for every tenant but the default one (whose chains predate tenants)."""
    body: dict[str, Any] = {
        "seq": seq,
        "at": _aware(at).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": actor,
        "action": action,
        "speaker": speaker,
        "decision": decision,
        "score": score,
        "request_id": request_id,
        "detail": detail,
    }
    if tenant_id != 1:
        body["tenant"] = tenant_id
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("utf-8")).hexdigest()


def append(conn: Connection, tenant_id: int, entries: Sequence[PendingEntry]) -> None:
    """Append ``entries`` to tenant ``tenant_id``'s chain inside the caller's write
    transaction, locking its head row first (call it after the change's own locks: see the
    module docstring)."""
    if not entries:
        return
    head = conn.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == tenant_id).with_for_update()
    ).one()
    seq, prev = int(head.seq), str(head.hash)
    actor, request_id = current_actor()
    # Microseconds are what both databases keep: the hash is of what will be read back.
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for entry in entries:
        if entry.action not in AUDIT_ACTIONS:
            raise ValueError(f"unknown audit action {entry.action!r}")
        seq += 1
        score = None if entry.score is None else float(entry.score)
        detail = _canonical_detail(entry.detail)
        digest = entry_hash(
            prev,
            seq,
            now,
            actor,
            entry.action,
            entry.speaker,
            entry.decision,
            score,
            request_id,
            detail,
            tenant_id,
        )
        rows.append(
            {
                "tenant_id": tenant_id,
                "seq": seq,
                "at": now,
                "actor": actor,
                "action": entry.action,
                "speaker": entry.speaker,
                "decision": entry.decision,
                "score": score,
                "request_id": request_id,
                "detail": detail,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    conn.execute(insert(AuditEntryRow), rows)
    conn.execute(update(AuditHead).where(AuditHead.id == tenant_id).values(seq=seq, hash=prev))


def _entry(row: Any, tenant: str) -> AuditEntry:
    return AuditEntry(
        seq=int(row.seq),
        at=_aware(row.at),
        actor=row.actor,
        action=row.action,
        speaker=row.speaker,
        decision=row.decision,
        score=row.score,
        request_id=row.request_id,
        detail=json.loads(row.detail) if row.detail is not None else None,
        prev_hash=row.prev_hash,
        hash=row.hash,
        tenant=tenant,
    )


def read_entries(
    conn: Connection,
    tenant_id: int | None,
    since: dt.datetime | None = None,
    speaker: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Tenant ``tenant_id``'s entries in chain order, filtered: at or after ``since``
    (naive: UTC), about ``speaker`` (exact name), of ``action``; the last ``limit`` of them
    when given. None (a tenant never written): none."""
    if action is not None and action not in AUDIT_ACTIONS:
        raise UsageError(f"action must be one of {', '.join(AUDIT_ACTIONS)}, not {action!r}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, not {limit}")
    if tenant_id is None:
        return []
    tenant = str(conn.execute(select(Tenant.name).where(Tenant.id == tenant_id)).scalar_one())
    query = select(AuditEntryRow).where(AuditEntryRow.tenant_id == tenant_id)
    if since is not None:
        query = query.where(AuditEntryRow.at >= _aware(since))
    if speaker is not None:
        query = query.where(AuditEntryRow.speaker == speaker)
    if action is not None:
        query = query.where(AuditEntryRow.action == action)
    if limit is not None:
        rows = conn.execute(query.order_by(AuditEntryRow.seq.desc()).limit(limit)).all()
        return [_entry(r, tenant) for r in reversed(rows)]
    return [_entry(r, tenant) for r in conn.execute(query.order_by(AuditEntryRow.seq)).all()]


def check_chain(conn: Connection, tenant_id: int | None) -> AuditCheck:
    """Walk tenant ``tenant_id``'s whole chain in ``seq`` order and report the first entry
    that does not fit: a gap in the numbering (deleted), an entry that does not follow its
    predecessor's hash (deleted, inserted or reordered), one whose hash is not of its
    content (modified), or a log that does not end at the head row (entries deleted or
    appended at the end). A tenant never written has an empty, whole chain."""
    if tenant_id is None:
        return AuditCheck(True, 0, 0, ZERO_HASH)
    head = conn.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == tenant_id)
    ).one()
    head_seq, head_hash = int(head.seq), str(head.hash)
    expected, prev, count = 1, ZERO_HASH, 0

    def bad(seq: int, problem: str) -> AuditCheck:
        return AuditCheck(False, count, head_seq, head_hash, seq, problem)

    rows = select(AuditEntryRow).where(AuditEntryRow.tenant_id == tenant_id)
    for row in conn.execute(rows.order_by(AuditEntryRow.seq)):
        seq = int(row.seq)
        if seq != expected:
            if seq > expected:
                return bad(expected, f"entry {expected} is missing (deleted)")
            return bad(seq, f"entry {seq} is out of sequence (inserted)")
        if row.prev_hash != prev:
            return bad(
                seq,
                f"entry {seq} does not follow entry {seq - 1} "
                "(an entry was deleted, inserted or reordered)",
            )
        digest = entry_hash(
            row.prev_hash,
            seq,
            row.at,
            row.actor,
            row.action,
            row.speaker,
            row.decision,
            row.score,
            row.request_id,
            row.detail,
            tenant_id,
        )
        if digest != row.hash:
            return bad(seq, f"entry {seq} was modified (its hash is not of its content)")
        prev, expected, count = row.hash, expected + 1, count + 1
    last = expected - 1
    if last < head_seq:
        return bad(last + 1, f"entry {last + 1} is missing (the log ends before its head)")
    if last > head_seq:
        return bad(head_seq + 1, f"entry {head_seq + 1} was added after the head (inserted)")
    if prev != head_hash:
        return bad(last, f"entry {last} does not match the head hash (modified or replaced)")
    return AuditCheck(True, count, head_seq, head_hash)


def enroll_entry(result: EnrollResult, mode: str) -> PendingEntry:
    """The audit entry of one enrollment: counts, never the recordings or their paths."""
    if result.refused:
        decision = "refused"
    elif result.skipped:
        decision = "skipped"
    elif result.created:
        decision = "created"
    elif result.added or result.removed:
        decision = "updated"
    else:
        decision = "unchanged"
    return PendingEntry(
        "enroll",
        speaker=result.name,
        decision=decision,
        detail={
            "mode": mode,
            "added": len(result.added),
            "duplicates": len(result.duplicates),
            "removed": result.removed,
        },
    )
