"""The store's governance verbs: retention (expire), opt-out and opt-in, the consent
requirement. Each is one write transaction with ``store_state`` locked that erases through
:func:`~speakerdb.storage._governance.erase_speaker` (delete's path) and writes its audit
entries; the traces on disk are erased after the commit, as delete does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from speakerdb.errors import NotFoundError
from speakerdb.storage._audit import PendingEntry, append
from speakerdb.storage._audit_store import AuditedStore
from speakerdb.storage._governance import (
    add_opt_out,
    erase_speaker,
    expired,
    opted_out,
    parse_duration,
    remove_opt_out,
)
from speakerdb.storage._names import validated_name
from speakerdb.storage._rows import lock_state, set_seq, speaker_row
from speakerdb.storage._schema import Speaker, Tenant, utcnow

__all__ = ["GovernedStore"]


class GovernedStore(AuditedStore):
    """Governance verbs of :class:`~speakerdb.storage._store.EnrollmentStore`."""

    def expire(self, now: dt.datetime | None = None, all_tenants: bool = False) -> list[str]:
        """Erase every speaker of this tenant (``all_tenants``: of every tenant, for the
        database's owner) whose retention ended by ``now`` (default: the present), like a
        delete, with one "expire" audit entry each in its tenant's chain. Returns their
        names. The database files still hold the erased bytes until :meth:`compact` (``db
        expire`` runs it). Raises UsageError (read-only), StoreError."""
        moment = now or utcnow()

        def work(conn: Connection) -> list[str]:
            state = lock_state(conn)
            seq = int(state.change_seq)
            tenant_id = None if all_tenants else self.tenant_id(conn)
            if tenant_id is None and not all_tenants:
                return []
            names: list[str] = []
            entries: dict[int, list[PendingEntry]] = {}
            for row in expired(conn, moment, tenant_id):
                seq += 1
                erase_speaker(conn, row.id, seq)
                names.append(row.name)
                entry = PendingEntry("expire", speaker=row.name, decision="erased")
                entries.setdefault(int(row.tenant_id), []).append(entry)
            if names:
                set_seq(conn, seq)
                for owner, written in sorted(entries.items()):
                    append(conn, owner, written)
            return names

        names = self.write(work, "expire speakers")
        if names:
            self.erase_traces()
        return names

    def opt_out(self, name: str) -> bool:
        """Erase the speaker called ``name`` (if enrolled) like a delete and refuse the name
        from now on, keeping only its keyed hash. Returns whether a speaker was erased.
        The audit entry names the hash, not the name. Raises UsageError, StoreError."""
        name = validated_name(name)

        def work(conn: Connection) -> bool:
            state = lock_state(conn)
            tenant_id = self.writing_tenant(conn)
            found = conn.execute(
                select(Speaker.id).where(Speaker.tenant_id == tenant_id, Speaker.name == name)
            ).first()
            erased = False
            if found is None:
                try:  # looked up like every other verb (Unicode forms, spaces)
                    found = speaker_row(conn, tenant_id, name, for_update=True)
                except NotFoundError:
                    found = None
            if found is not None:
                seq = int(state.change_seq) + 1
                erase_speaker(conn, found.id, seq)
                set_seq(conn, seq)
                erased = True
            digest = add_opt_out(conn, tenant_id, name, utcnow())
            entry = PendingEntry(
                "opt-out",
                decision="erased" if erased else "recorded",
                detail={"name_hmac": digest},
            )
            append(conn, tenant_id, [entry])
            return erased

        erased = self.write(work, "opt out")
        if erased:
            self.erase_traces()
        return erased

    def opt_in(self, name: str) -> None:
        """Lift the opt-out of ``name``: it may be enrolled again. Raises NotFoundError
        when the name is not opted out, UsageError, StoreError."""
        name = validated_name(name)

        def work(conn: Connection) -> None:
            lock_state(conn)
            tenant_id = self.tenant_id(conn)
            digest = remove_opt_out(conn, tenant_id, name)
            if digest is None or tenant_id is None:
                raise NotFoundError(f"{name!r} is not opted out")
            entry = PendingEntry("opt-in", decision="lifted", detail={"name_hmac": digest})
            append(conn, tenant_id, [entry])

        self.write(work, "opt in")

    def opted_out(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` that are opted out (checked again when enrolling)."""
        with self.reading("read the opt-outs") as conn:
            return opted_out(conn, self.tenant_id(conn), list(names))

    def require_consent(self) -> bool:
        """Whether every new speaker's enrollment in this tenant must record consent."""
        with self.reading("read the settings") as conn:
            value = conn.execute(
                select(Tenant.require_consent).where(Tenant.id == self.tenant_id(conn))
            ).scalar()
        return bool(value)

    def set_require_consent(self, required: bool) -> None:
        """Require (or stop requiring) consent for every enrollment of a new speaker in
        this tenant."""
        self._set_tenant_setting(
            {"require_consent": required}, {"require_consent": required}, "consent setting"
        )

    def default_retention(self) -> str | None:
        """The tenant's default retention period ("3y" ...) for new speakers, or None."""
        with self.reading("read the settings") as conn:
            value = conn.execute(
                select(Tenant.default_retention).where(Tenant.id == self.tenant_id(conn))
            ).scalar()
        return str(value) if value else None

    def set_default_retention(self, period: str | None) -> None:
        """Give every new speaker of this tenant enrolled without an expiry the expiry now +
        ``period`` ("3y", "90d", "2w", "12h"; None: no default). Speakers enrolled already
        keep theirs. Audited. Raises UsageError for a bad period or a read-only store."""
        if period is not None:
            parse_duration(period)
            period = period.strip().lower()
        self._set_tenant_setting(
            {"default_retention": period}, {"default_expires_after": period}, "default retention"
        )

    def _set_tenant_setting(
        self, values: dict[str, Any], detail: dict[str, Any], what: str
    ) -> None:
        """Write ``values`` to this tenant's row with one audited "setting" entry
        (``detail``) in the same transaction."""

        def work(conn: Connection) -> None:
            lock_state(conn)
            tenant_id = self.writing_tenant(conn)
            conn.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))
            append(conn, tenant_id, [PendingEntry("setting", decision="set", detail=detail)])

        self.write(work, f"change the {what}")
