"""What the routes of one app share (:class:`ServiceState`): settings, the database and its
micro-batcher, metrics, authentication, redaction. Below the app and its routes, so both
import it and neither imports the other's module for it."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from speakerdb import ApiKeyRecord, SpeakerDB
from speakerdb.errors import SpeakerDBError
from speakerdb.service._batcher import BatchingEmbedder
from speakerdb.service._errors import (
    Redactor,
    ServiceError,
    library_error_body,
    server_state_message,
    status_for,
)
from speakerdb.service._metrics import Metrics
from speakerdb.service._settings import ServiceSettings
from speakerdb.service._slots import SESSION_SLOTS_ENV, SessionSlots

__all__ = ["ServiceState"]

log = logging.getLogger("speakerdb.service")


class ServiceState:
    """What the routes of one app share: settings, the database (whose model is the
    micro-batcher), metrics, whether keys are required, and what answers must not show."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._db: SpeakerDB | None = None
        self.batcher: BatchingEmbedder | None = None
        self._keys_required = settings.auth == "required"
        self._keys_lock = threading.Lock()
        self.redact = Redactor([settings.db_url, _path_like(settings.model), settings.upload_dir])
        # Live sessions' slots: shared by every worker of `serve --workers N` (the cap is
        # the server's), else this app's own.
        shared = os.environ.get(SESSION_SLOTS_ENV) or None
        self.session_slots = SessionSlots(settings.max_sessions, shared)
        self._tenants: dict[str, SpeakerDB] = {}
        self._tenants_lock = threading.Lock()

    @property
    def db(self) -> SpeakerDB:
        if self._db is None:
            raise ServiceError(503, "starting", "the server is starting; try again shortly")
        return self._db

    def tenant_db(self, key: ApiKeyRecord | None) -> SpeakerDB:
        """The database as the request's key sees it: its tenant's view (sharing the
        connections, index and batcher), or the default tenant for a keyless server (key
        None). A key never reaches another tenant."""
        tenant = key.tenant if key is not None else "default"
        db = self.db
        if tenant == db.tenant:
            return db
        with self._tenants_lock:
            view = self._tenants.get(tenant)
            if view is None:
                view = self._tenants[tenant] = db.in_tenant(tenant)
        return view

    @property
    def ready(self) -> bool:
        return self._db is not None

    def start(self) -> None:
        """Open the database, load the model, warm the index, start the batcher (blocking:
        called in a worker thread by the lifespan)."""
        s = self.settings
        opened = SpeakerDB.open(s.db_url, model=s.model, device=s.device, background_index=True)
        try:
            model = opened.model  # loaded now, not by the first request
            self.batcher = BatchingEmbedder(
                model,
                max_wait_s=s.batch_wait_s,
                max_files=s.batch_files,
                timeout_s=s.request_timeout_s,
                on_batch=self.metrics.batch,
                parallel=s.batch_parallel,
            )
            db = SpeakerDB(opened.store, self.batcher)
            if db.store.model() is not None:
                db.store.index_status()  # loads (or builds) the index and catches up
            if s.auth == "auto" and db.api_keys_required():
                self._keys_required = True
        except BaseException:
            opened.close()
            if self.batcher is not None:
                self.batcher.close()
            raise
        location = db.store.location
        self.redact = Redactor(
            [
                s.db_url,
                location.display,
                location.url.render_as_string(hide_password=False),
                str(location.sqlite_path) if location.sqlite_path is not None else None,
                str(location.index_path) if location.index_path is not None else None,
                _path_like(s.model),
                db.identity.source,
                s.upload_dir,
                tempfile.gettempdir(),
            ]
        )
        self._db = db
        if s.expire_every_s > 0:
            self.expire_due()  # a server started after downtime erases what fell due

    def expire_due(self) -> int:
        """Erase the voiceprints whose retention ended, in every tenant (as ``db expire
        --all-tenants``: through delete's path, then compacted); returns how many. A failure
        is logged, never raised: the next pass tries again."""
        try:
            names = self.db.expire(all_tenants=True)
        except SpeakerDBError as exc:
            log.warning("retention: expiry failed (%s): %s", exc.code, exc.message)
            return 0
        if names:
            # Counts only: names are in the audit log, which is where they belong.
            log.info("retention: erased %d expired speaker(s)", len(names))
        return len(names)

    def stop(self) -> None:
        self.session_slots.close()
        if self.batcher is not None:
            self.batcher.close()
        if self._db is not None:
            self._db.close()

    def error_body(self, exc: SpeakerDBError, redact: bool = True) -> dict[str, Any]:
        """What a client is told of a library error (see :mod:`speakerdb.service._errors`);
        an error about the server's own state is logged here in full. ``redact``: False
        for a body whose answer is redacted as a whole later (after the uploads' temporary
        paths are replaced by their names)."""
        if server_state_message(exc) is not None:
            log.warning("answered %s (%s): %s", status_for(exc), exc.code, exc.message)
        return library_error_body(exc, self.redact if redact else None)

    # --- authentication -----------------------------------------------------------------------

    def auth_required(self) -> bool:
        """Keys are required when the settings say so, and in "auto" mode from the moment
        the first key is created (recorded in the database: never open again after that,
        even if every key is revoked, until ``speakerdb keys allow-keyless``)."""
        if self._keys_required:
            return True
        with self._keys_lock:
            if not self._keys_required and self.db.api_keys_required():
                self._keys_required = True
        return self._keys_required

    def authorize(self, secret: str | None, scopes: Sequence[str]) -> ApiKeyRecord | None:
        """The key presented, if it allows any of ``scopes``; None when no key is needed.
        Raises ServiceError 401 (no key, or not a valid one) or 403 (outside its scopes).
        Blocking (SQL): call it from a worker thread."""
        if not self.auth_required():
            return None
        challenge = {"WWW-Authenticate": 'Bearer realm="speakerdb"'}
        if not secret:
            raise ServiceError(
                401, "unauthorized", "an API key is needed: Authorization: Bearer KEY", challenge
            )
        key = self.db.authenticate(secret)
        if key is None:
            raise ServiceError(401, "unauthorized", "invalid or revoked API key", challenge)
        if not any(key.allows(scope) for scope in scopes):
            raise ServiceError(
                403,
                "forbidden",
                f"key {key.name!r} (scopes: {', '.join(key.scopes)}) may not do this; it needs "
                f"the scope {' or '.join(scopes)}",
            )
        return key


def _path_like(model: str | None) -> str | None:
    """``--model`` when it names a file or folder (a model's name is no secret)."""
    return model if model is not None and ("/" in model or os.sep in model) else None
