"""API keys of the HTTP service (``speakerdb serve``), kept in the database they open.

A key is 32 random bytes (URL-safe base64, 43 characters) behind the prefix ``sdb_``. Only
its sha256 is stored: a key with that much entropy needs no salt or slow hash (nobody can
search 2^256 keys for a stolen digest), and a lookup by digest compares the presented key
in constant time (:func:`hmac.compare_digest` on the digests). The key itself is returned
once, by :func:`create_key`, and cannot be recovered later.

Scopes: ``verify`` (verify, compare), ``identify`` (identify, list and show speakers),
``enroll``, ``audit`` (read the audit log), and ``admin`` (everything, including delete,
rename and keys). ``read`` is shorthand for verify + identify.

Creating the first key sets ``store_state.keys_required`` in the same transaction; revoking
keys never clears it, so a server never answers without a key again once one existed (see
:func:`keys_required`). :func:`allow_keyless` clears it, only while no key exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from speakerdb.errors import AlreadyExistsError, NotFoundError, UsageError
from speakerdb.storage._audit import PendingEntry, append
from speakerdb.storage._engine import read_transaction, retrying, store_error, write_transaction
from speakerdb.storage._names import canonical_name, validated_name
from speakerdb.storage._schema import ApiKey, StoreState, Tenant, utcnow
from speakerdb.storage._tenants import DEFAULT_TENANT, ensure_tenant

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "ApiKeyRecord",
    "NewApiKey",
    "allow_keyless",
    "any_keys",
    "authenticate",
    "create_key",
    "keys_required",
    "list_keys",
    "parse_scopes",
    "revoke_key",
]

T = TypeVar("T")

KEY_PREFIX = "sdb_"
SCOPES = ("verify", "identify", "enroll", "audit", "admin")
_ALIASES = {"read": ("verify", "identify")}
_MAX_KEY_NAME = 64
_SHOWN_CHARACTERS = 12  # "sdb_" and 8 random characters: enough to tell keys apart
_MAX_PRESENTED = 256  # longer "keys" are refused before hashing


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored key, without its secret. ``prefix``: its first characters, to recognise it."""

    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    tenant: str = DEFAULT_TENANT
    """The one tenant the key acts in."""

    def allows(self, scope: str) -> bool:
        """Whether this key may do what ``scope`` covers (admin covers everything)."""
        return "admin" in self.scopes or scope in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "tenant": self.tenant,
        }


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: ``secret`` is the key itself, shown this once."""

    record: ApiKeyRecord
    secret: str


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validated scopes, sorted in :data:`SCOPES` order; each item may hold several
    separated by commas or spaces, and ``read`` means verify + identify. Raises UsageError
    for an unknown scope or none at all."""
    wanted: set[str] = set()
    for item in scopes:
        for word in str(item).replace(",", " ").split():
            scope = word.strip().lower()
            if scope in _ALIASES:
                wanted.update(_ALIASES[scope])
            elif scope in SCOPES:
                wanted.add(scope)
            else:
                raise UsageError(f"unknown scope {word!r}: use {', '.join((*SCOPES, *_ALIASES))}")
    if not wanted:
        raise UsageError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in wanted)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _record(row: Any) -> ApiKeyRecord:
    created = row.created_at
    if created.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
        created = created.replace(tzinfo=dt.UTC)
    return ApiKeyRecord(row.name, row.prefix, tuple(row.scopes.split()), created, row.tenant)


def _key_name(name: object) -> str:
    try:
        cleaned = validated_name(name)
    except UsageError as exc:
        raise UsageError(exc.message.replace("speaker name", "key name")) from None
    if len(cleaned) > _MAX_KEY_NAME:
        raise UsageError(f"key name is longer than {_MAX_KEY_NAME} characters")
    return cleaned


_COLUMNS = select(
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.scopes,
    ApiKey.created_at,
    ApiKey.tenant_id,
    Tenant.name.label("tenant"),
).join(Tenant, Tenant.id == ApiKey.tenant_id)


def create_key(
    engine: Engine, where: str, name: str, scopes: Iterable[str], tenant: str = DEFAULT_TENANT
) -> NewApiKey:
    """Create a key of ``tenant`` called ``name`` with ``scopes`` (key names are unique
    within a tenant). Returns it with its secret (the only time the secret is available).
    Raises UsageError (bad name or scope), AlreadyExistsError (the tenant has a key of that
    name), StoreError."""
    clean_name = _key_name(name)
    granted = parse_scopes(scopes)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()

    def work(conn: Connection) -> None:
        tenant_id = ensure_tenant(conn, tenant)
        taken = conn.execute(
            select(ApiKey.id).where(ApiKey.tenant_id == tenant_id, ApiKey.name == clean_name)
        ).first()
        if taken is not None:
            raise AlreadyExistsError(f"an API key named {clean_name!r} already exists")
        conn.execute(
            insert(ApiKey).values(
                tenant_id=tenant_id,
                name=clean_name,
                key_sha256=_digest(secret),
                prefix=secret[:_SHOWN_CHARACTERS],
                scopes=" ".join(granted),
                created_at=now,
            )
        )
        # In the key's own transaction: no server can see the key without the flag.
        conn.execute(update(StoreState).where(StoreState.id == 1).values(keys_required=True))
        detail = {"key": clean_name, "scopes": list(granted)}
        append(conn, tenant_id, [PendingEntry("key-create", decision="created", detail=detail)])

    try:
        retrying(lambda: _in_write(engine, work), f"cannot create an API key in {where}")
    except IntegrityError:  # a concurrent create of the same name won the race
        raise AlreadyExistsError(f"an API key named {clean_name!r} already exists") from None
    record = ApiKeyRecord(clean_name, secret[:_SHOWN_CHARACTERS], granted, now, tenant)
    return NewApiKey(record, secret)


def _in_write(engine: Engine, work: Callable[[Connection], T]) -> T:
    with write_transaction(engine) as conn:
        return work(conn)


def list_keys(engine: Engine, tenant: str = DEFAULT_TENANT) -> list[ApiKeyRecord]:
    """Every key of ``tenant`` (without secrets), by name."""
    try:
        with read_transaction(engine) as conn:
            rows = conn.execute(_COLUMNS.where(Tenant.name == tenant).order_by(ApiKey.name)).all()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot list API keys") from None
    return [_record(r) for r in rows]


def revoke_key(engine: Engine, where: str, name: str, tenant: str = DEFAULT_TENANT) -> ApiKeyRecord:
    """Delete ``tenant``'s key called ``name``: it stops working at once, in every server.
    Raises NotFoundError, StoreError."""
    name = canonical_name(name)

    def work(conn: Connection) -> ApiKeyRecord:
        row = conn.execute(_COLUMNS.where(Tenant.name == tenant, ApiKey.name == name)).first()
        if row is None:
            raise NotFoundError(f"no API key named {name!r}")
        conn.execute(delete(ApiKey).where(ApiKey.tenant_id == row.tenant_id, ApiKey.name == name))
        entry = PendingEntry("key-revoke", decision="revoked", detail={"key": name})
        append(conn, row.tenant_id, [entry])
        return _record(row)

    return retrying(lambda: _in_write(engine, work), f"cannot revoke an API key in {where}")


def authenticate(engine: Engine, secret: str) -> ApiKeyRecord | None:
    """The key whose secret is ``secret``, or None. Raises StoreError when the database
    cannot be read."""
    if not secret or len(secret) > _MAX_PRESENTED:
        return None
    digest = _digest(secret)
    try:
        with read_transaction(engine) as conn:
            row = conn.execute(
                _COLUMNS.add_columns(ApiKey.key_sha256).where(ApiKey.key_sha256 == digest)
            ).first()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot check the API key") from None
    if row is None or not hmac.compare_digest(row.key_sha256, digest):
        return None
    return _record(row)


def any_keys(engine: Engine) -> bool:
    """Whether at least one key exists."""
    try:
        with read_transaction(engine) as conn:
            count = conn.execute(select(func.count()).select_from(ApiKey)).scalar_one()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot read API keys") from None
    return int(count) > 0


def keys_required(engine: Engine) -> bool:
    """Whether a server on this database must require API keys: a key exists, or one was
    ever created (revoking every key does not open the server again). Raises StoreError."""
    try:
        with read_transaction(engine) as conn:
            flagged = conn.execute(
                select(StoreState.keys_required).where(StoreState.id == 1)
            ).scalar()
            if flagged:
                return True
            count = conn.execute(select(func.count()).select_from(ApiKey)).scalar_one()
    except SQLAlchemyError as exc:
        raise store_error(exc, "cannot read API keys") from None
    return int(count) > 0


def allow_keyless(engine: Engine, where: str) -> None:
    """Clear the "keys required" mark, so that a server on a loopback address answers
    without a key again (the owner's explicit decision, after every key was revoked).
    Raises UsageError while any key exists, StoreError."""

    def work(conn: Connection) -> None:
        count = conn.execute(select(func.count()).select_from(ApiKey)).scalar_one()
        if int(count) > 0:
            raise UsageError(
                f"{int(count)} API key(s) exist: revoke them first (speakerdb keys list)"
            )
        conn.execute(update(StoreState).where(StoreState.id == 1).values(keys_required=False))

    retrying(lambda: _in_write(engine, work), f"cannot change the key setting of {where}")
