"""SpeakerDB's administration: switching model (re-embedding), speakers listed, renamed,
deleted, checks and the index, API keys of the HTTP service (through the store), compaction."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from speakerdb.enroll._base import (
    FacadeBase,
    Progress,
)
from speakerdb.enroll._reembed import ReembedReport
from speakerdb.model._registry import resolve_model
from speakerdb.storage._records import (
    CompactResult,
    SpeakerRecord,
    UtteranceRecord,
)

if TYPE_CHECKING:
    import datetime as dt

    from speakerdb.enroll._ray_batch import RayOptions
    from speakerdb.model._embedder import Embedder
    from speakerdb.storage._audit import AuditCheck, AuditEntry
    from speakerdb.storage._check import CheckReport
    from speakerdb.storage._index_cache import IndexStatus
    from speakerdb.storage._keys import ApiKeyRecord, NewApiKey


__all__ = ["AdminVerbs"]


class AdminVerbs(FacadeBase):
    """The administration verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    # --- switching model ----------------------------------------------------------------------

    def reembed(
        self,
        model: str | os.PathLike[str] | Embedder | None,
        *,
        allow_missing: bool = False,
        drop_old: bool = False,
        progress: Progress | None = None,
        commit_every: int | None = None,
        ray: RayOptions | str | None = None,
    ) -> ReembedReport:
        """Switch this database to another embedding model (a name, a path or an Embedder).

        Every enrolled recording is embedded again from the path it was enrolled from, after
        checking it is still the same audio; then ONE transaction switches the database:
        vectors, centroids and the model it records (its default threshold applies; the
        calibrations, fitted on the old model's scores, are reset). The old model's vectors
        stay until ``drop_old``, so switching back needs no re-embedding. Interrupted (even
        killed), it keeps the vectors it made and a rerun resumes; until the switch the
        database answers with its old model. Recordings gone, changed or unusable by the new
        model are listed in a report with status "blocked" and nothing switches, unless
        ``allow_missing``: then they are dropped, and speakers left without any recording
        are deleted (listed). ``model`` None with ``drop_old``: delete the vectors of other
        models. ``progress(done, total)``: after each committed batch of ``commit_every``
        recordings (default :data:`speakerdb.enroll._reembed.COMMIT_EVERY`). ray: check and
        embed on a Ray cluster (see :meth:`enroll_manifest`; SQLite only with "local").

        Raises UsageError (read-only, empty database), ModelError / ModelNotFoundError,
        StoreError.
        """
        from speakerdb.enroll._ray_batch import check_database, ray_options
        from speakerdb.enroll._reembed import reembed_store

        options = None if ray is None else ray_options(ray)
        if options is not None:
            location = self.store.location
            check_database(options, location.dialect, location.display)
        new: Embedder | None = None
        if isinstance(model, str | os.PathLike):
            from speakerdb.model._registry import load_model

            new = load_model(resolve_model(model), self._device)
        elif model is not None:
            new = model
        report = reembed_store(
            self.store,
            lambda: self.model,
            new,
            allow_missing=allow_missing,
            drop_old=drop_old,
            progress=progress,
            ray=options,
            **({"commit_every": commit_every} if commit_every else {}),
        )
        if new is not None and report.status in ("switched", "current"):
            with self._model_lock:
                self._embedder, self._model_arg = new, None
            report.decision_rule = self.decision_policy().rule.to_dict()
        return report

    # --- management ---------------------------------------------------------------------------

    def speakers(self) -> list[SpeakerRecord]:
        return self.store.speakers()

    def speaker(self, name: str) -> SpeakerRecord:
        return self.store.speaker(name)

    def utterances(self, name: str) -> list[UtteranceRecord]:
        return self.store.utterances(name)

    def rename(self, old: str, new: str) -> SpeakerRecord:
        return self.store.rename_speaker(old, new)

    def delete(self, name: str) -> SpeakerRecord:
        """Delete a speaker with every recording's voiceprint (from SQL and the index file)."""
        return self.store.delete_speaker(name)

    def set_metadata(self, name: str, metadata: dict[str, Any] | None) -> SpeakerRecord:
        return self.store.set_metadata(name, metadata)

    def check(self) -> CheckReport:
        """Verify the database's invariants and its index against SQL."""
        from speakerdb.storage._check import check_store

        return check_store(self.store)

    def rebuild_index(self, kind: str | None = None) -> IndexStatus:
        """Rebuild the vector index from SQL (``kind``: "auto", "flat", "ivf" or "ivfsq")."""
        return self.store.rebuild_index(kind)

    # --- API keys of the HTTP service ---------------------------------------------------------

    def create_key(self, name: str, scopes: Sequence[str]) -> NewApiKey:
        """Create an API key for ``speakerdb serve``; its secret is in the result, and only
        there (the database keeps its sha256). scopes: verify, identify, enroll, audit,
        admin (or read = verify + identify). Raises UsageError, AlreadyExistsError, StoreError."""

        return self.store.create_key(name, scopes)

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every API key, without secrets."""

        return self.store.api_keys()

    def revoke_key(self, name: str) -> ApiKeyRecord:
        """Delete an API key: every server refuses it from its next request on. Raises
        NotFoundError."""

        return self.store.revoke_key(name)

    def authenticate(self, secret: str) -> ApiKeyRecord | None:
        """The API key whose secret this is, or None (compared in constant time)."""

        return self.store.authenticate(secret)

    def has_api_keys(self) -> bool:
        """Whether any API key exists (a server without one stays on loopback)."""

        return self.store.has_api_keys()

    def api_keys_required(self) -> bool:
        """Whether a server on this database must require API keys: from the creation of
        the first key on, even after every key is revoked (until :meth:`allow_keyless`)."""

        return self.store.api_keys_required()

    def allow_keyless(self) -> None:
        """Let a server on a loopback address answer without keys again. Raises UsageError
        while any key exists."""

        self.store.allow_keyless()

    def compact(self) -> CompactResult:
        """Erase deleted voiceprints' bytes from the database files for good and shrink them
        (PostgreSQL: VACUUM FULL of the vector tables, which locks them while it runs;
        SQLite: VACUUM). Deleting a speaker removes its rows at once, but PostgreSQL keeps
        the old row versions in its table files until they are rewritten."""
        return self.store.compact()

    # --- audit log (see speakerdb.storage._audit) -----------------------------------------------

    def audit_entries(
        self,
        since: dt.datetime | None = None,
        speaker: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries, oldest first: those at or after ``since`` (naive: UTC), about
        ``speaker`` (its name at the time), of ``action`` (enroll, verify, identify,
        compare, rename, delete, key-create, key-revoke, calibration); the last ``limit``.
        Raises UsageError (unknown action, limit < 1), StoreError."""
        return self.store.audit_entries(since, speaker, action, limit)

    def audit_verify(self) -> AuditCheck:
        """Check the audit log's hash chain: ``ok``, or the first entry that was modified,
        deleted, inserted or reordered (``bad_seq``, ``problem``). Raises StoreError."""
        return self.store.audit_verify()

    # --- retention, consent, opt-out (see speakerdb.storage._governance) ------------------------

    def expire(
        self, now: dt.datetime | None = None, compact: bool = True, all_tenants: bool = False
    ) -> list[str]:
        """Erase every speaker of this tenant (``all_tenants``: of every tenant) whose
        retention period ended (by ``now``, default the present), as a delete does, each
        with an "expire" audit entry; then, when any was erased and ``compact``,
        :meth:`compact` the database files so that no byte of them is left. Returns the
        erased names. Raises UsageError (read-only), StoreError."""
        names = self.store.expire(now, all_tenants=all_tenants)
        if names and compact:
            self.store.compact()
        return names

    def opt_out(self, name: str, compact: bool = True) -> bool:
        """Erase ``name`` like a delete (and, with ``compact``, compact the files) and
        refuse the name at enrollment from now on; only a keyed hash of the name is kept.
        Returns whether a speaker was erased (a name not enrolled is refused all the same).
        Raises UsageError, StoreError."""
        erased = self.store.opt_out(name)
        if erased and compact:
            self.store.compact()
        return erased

    def opt_in(self, name: str) -> None:
        """Lift an opt-out. Raises NotFoundError when ``name`` is not opted out."""
        self.store.opt_in(name)

    def require_consent(self) -> bool:
        """Whether every enrollment of a new speaker must record consent."""
        return self.store.require_consent()

    def set_require_consent(self, required: bool) -> None:
        """Require (or stop requiring) consent for every enrollment of a new speaker."""
        self.store.set_require_consent(required)

    def default_retention(self) -> str | None:
        """This tenant's default retention period for new speakers ("3y" ...), or None."""
        return self.store.default_retention()

    def set_default_retention(self, period: str | None) -> None:
        """Every new speaker of this tenant enrolled without ``expires_after`` expires
        ``period`` after its enrollment ("3y", "90d", "2w", "12h"; None: no default; BIPA's
        3-year cap is "3y"). Speakers enrolled already keep theirs. Raises UsageError for a
        bad period."""
        self.store.set_default_retention(period)
