"""SpeakerDB: the one object applications use -- enroll, verify, compare, identify, manage.

It composes the model layer (recordings -> voiceprints) and the store (voiceprints in SQL and
a vector index) and decides everything with one rule: accept iff score >= threshold, the
score being the calibrated log-likelihood ratio where a calibration applies, else the cosine
(or its AS-norm z-score). Which calibration and threshold apply is :mod:`._policy`'s
business. Every result carries the raw cosine, the LLR, the score used, the threshold, the
rule and the model. Enrollment bookkeeping lives in :mod:`._enrollment`, AS-norm cohorts in
:mod:`._cohort`, evaluation in :mod:`._evaluation`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from speakerdb.enroll._admin_verbs import AdminVerbs
from speakerdb.enroll._base import Progress
from speakerdb.enroll._calibration_verbs import CalibrationVerbs
from speakerdb.enroll._decide_verbs import DecisionVerbs
from speakerdb.enroll._diarize_verb import DiarizeVerb
from speakerdb.enroll._enroll_verbs import EnrollVerbs
from speakerdb.enroll._session_verb import SessionVerb
from speakerdb.enroll._spoof_verbs import SpoofVerbs
from speakerdb.enroll._watchlist import WatchlistVerbs
from speakerdb.errors import DatabaseNotFoundError
from speakerdb.storage._store import EnrollmentStore

if TYPE_CHECKING:
    import torch

    from speakerdb.model._embedder import Embedder

__all__ = ["Progress", "SpeakerDB"]


class SpeakerDB(
    EnrollVerbs,
    DecisionVerbs,
    SessionVerb,
    DiarizeVerb,
    CalibrationVerbs,
    SpoofVerbs,
    AdminVerbs,
    WatchlistVerbs,
):
    """A speaker enrollment database with its embedding model.

    Open with :meth:`open`; use as a context manager or call :meth:`close`. The model loads
    on first use (listing or deleting speakers never loads torch).

    The verbs come by job from :mod:`._enroll_verbs`, :mod:`._decide_verbs`,
    :mod:`._diarize_verb`, :mod:`._evaluate_verbs`, :mod:`._calibration_verbs`,
    :mod:`._spoof_verbs`, :mod:`._session_verb` and :mod:`._admin_verbs`, over the state and
    model resolution of :mod:`._base`.
    """

    @classmethod
    def open(
        cls,
        url: Any = None,
        model: str | os.PathLike[str] | Embedder | None = None,
        device: str | torch.device | None = None,
        *,
        read_only: bool = False,
        missing_ok: bool = False,
        background_index: bool = False,
        tenant: str | None = None,
    ) -> SpeakerDB:
        """Open (or create) a database. url: SQLAlchemy URL or SQLite path (None:
        ``$SPEAKERDB_URL``, else ``$XDG_DATA_HOME/speakerdb/speakerdb.sqlite``). model: a
        built-in name, the path of a model file or folder (see :func:`speakerdb.load_model`)
        or a loaded Embedder; default: the database's own model (loaded from the path it
        records), else ``$SPEAKERDB_MODEL``, else "ge2e". A path to the database's model
        moved elsewhere (same sha256) is accepted and remembered. device: for the model
        (None: CUDA if available).

        read_only: never create or change the database (reading commands); a database that
        does not exist raises DatabaseNotFoundError, unless ``missing_ok``: then this
        SpeakerDB has no database and only compares recordings (compare, evaluate) with the
        model's threshold.

        background_index: for a long-running SpeakerDB (a server): index maintenance runs in
        a background thread, so no query waits for it (see :meth:`EnrollmentStore.open`).

        tenant: the tenant (domain) every verb acts in, default ``default``: speakers,
        keys, calibrations, opt-outs and the audit log of other tenants are out of reach
        (:meth:`in_tenant` gives another tenant's view of the same open database).

        A SpeakerDB may be shared by threads: the store serialises what must be, and the
        model is loaded once."""
        index_device = None if device is None else str(device)
        try:
            store = EnrollmentStore.open(
                url,
                device=index_device,
                read_only=read_only,
                background_index=background_index,
                tenant=tenant,
            )
        except DatabaseNotFoundError:
            if not (read_only and missing_ok):
                raise
            store = None
        return cls(store, model, device)
