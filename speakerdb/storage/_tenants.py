"""Tenants (domains): the partitions of one database. Every speaker, API key, calibration,
opted-out name and audit chain belongs to one tenant; a store (and every verb through it)
acts in exactly one (``EnrollmentStore.open(url, tenant=...)`` or ``store.in_tenant(name)``)
and never reads or writes another's rows.

``default`` (id 1) exists in every database (revision 0012 moved everything there). Other
tenants come into being with their first write (an enrollment, a key, a setting); reading a
tenant that was never written finds it empty, exactly like a tenant with no speakers, so a
caller cannot tell which tenants exist.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from speakerdb.errors import UsageError
from speakerdb.storage._names import validated_name
from speakerdb.storage._schema import AuditHead, Tenant, utcnow

__all__ = ["DEFAULT_TENANT", "ensure_tenant", "find_tenant", "tenant_names", "validated_tenant"]

DEFAULT_TENANT = "default"
_MAX_TENANT_NAME = 64


def validated_tenant(name: object) -> str:
    """The tenant name, checked like a speaker name and at most 64 characters. Raises
    UsageError."""
    try:
        cleaned = validated_name(name)
    except UsageError as exc:
        raise UsageError(exc.message.replace("speaker name", "tenant name")) from None
    if len(cleaned) > _MAX_TENANT_NAME:
        raise UsageError(f"tenant name is longer than {_MAX_TENANT_NAME} characters")
    return cleaned


def find_tenant(conn: Connection, name: str) -> int | None:
    """The id of the tenant called ``name``, or None when it was never written."""
    found = conn.execute(select(Tenant.id).where(Tenant.name == name)).scalar()
    return None if found is None else int(found)


def ensure_tenant(conn: Connection, name: str) -> int:
    """The id of tenant ``name``, created (with its empty audit chain) inside the caller's
    write transaction when it does not exist yet."""
    found = find_tenant(conn, name)
    if found is not None:
        return found
    tenant_id = int(
        conn.execute(
            insert(Tenant).values(name=name, created_at=utcnow()).returning(Tenant.id)
        ).scalar_one()
    )
    conn.execute(insert(AuditHead).values(id=tenant_id, seq=0, hash="0" * 64))
    return tenant_id


def tenant_names(conn: Connection) -> list[str]:
    """Every tenant, by name (for the database's owner: no key can list them)."""
    return list(conn.execute(select(Tenant.name).order_by(Tenant.name)).scalars())
