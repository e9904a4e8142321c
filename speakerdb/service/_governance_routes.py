"""Governance routes: ``GET /v1/audit`` (the audit log, for keys with the audit or admin
scope), opt-out and opt-in, and expiry (admin). Registered on the one router of
:mod:`speakerdb.service._routes`, so that the guard sees their scopes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Depends, Query
from starlette.responses import JSONResponse

from speakerdb.errors import UsageError
from speakerdb.service._routes import (
    Db,
    Recordings,
    SpeakerName,
    State,
    answer,
    require,
    router,
    uploads_of,
)

__all__ = [
    "add_to_watchlist",
    "audit_log",
    "expire",
    "list_watchlist",
    "opt_in",
    "opt_out",
    "remove_from_watchlist",
]


@router.get(
    "/v1/audit",
    tags=["audit"],
    summary="Audit entries, oldest first (audit or admin scope).",
    dependencies=[Depends(require("audit"))],
    responses={400: {"description": "A bad filter."}},
)
def audit_log(
    state: State,
    db: Db,
    since: Annotated[
        str | None, Query(description="Entries at or after this ISO 8601 time (default UTC).")
    ] = None,
    speaker: Annotated[
        str | None, Query(max_length=255, description="Entries about this speaker.")
    ] = None,
    action: Annotated[str | None, Query(max_length=32, description="Only this action.")] = None,
    limit: Annotated[int, Query(ge=1, le=10000, description="The last N entries.")] = 1000,
    verify: Annotated[bool, Query(description="Also check the hash chain.")] = False,
) -> JSONResponse:
    """The key's tenant's entries: tenant, seq, at, actor, action, speaker, decision, score,
    request_id, detail, hash.
    With ``verify=true`` the answer also holds the chain check (``ok``, ``bad_seq``,
    ``problem``, ``head_hash``)."""
    when = None
    if since is not None:
        try:
            when = dt.datetime.fromisoformat(since)
        except ValueError:
            raise UsageError(f"since must be an ISO 8601 date or time, not {since!r}") from None
        when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    entries = db.audit_entries(when, speaker, action, limit)
    document: dict[str, Any] = {"entries": [e.to_dict() for e in entries]}
    if verify:
        document["check"] = db.audit_verify().to_dict()
    return answer(state, document)


@router.post(
    "/v1/speakers/{name}/opt-out",
    tags=["speakers"],
    summary="Erase NAME like delete and refuse the name until opted in again (admin).",
    dependencies=[Depends(require("admin"))],
)
def opt_out(name: SpeakerName, state: State, db: Db) -> JSONResponse:
    """Only a keyed hash of the name is kept; the database files are compacted."""
    erased = db.opt_out(name)
    return answer(state, {"opted_out": name, "erased": erased})


@router.delete(
    "/v1/opt-outs/{name}",
    tags=["speakers"],
    summary="Lift the opt-out of NAME: it may be enrolled again (admin).",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "The name is not opted out."}},
)
def opt_in(name: SpeakerName, state: State, db: Db) -> JSONResponse:
    db.opt_in(name)
    return answer(state, {"opted_in": name})


@router.post(
    "/v1/expire",
    tags=["speakers"],
    summary="Erase every speaker whose retention period ended (admin).",
    dependencies=[Depends(require("admin"))],
)
def expire(state: State, db: Db) -> JSONResponse:
    """As ``speakerdb db expire``: erased like delete, audited, files compacted."""
    return answer(state, {"expired": db.expire()})


# --- watchlists ---------------------------------------------------------------------------------


@router.get(
    "/v1/watchlist",
    tags=["watchlist"],
    summary="The tenant's watchlist of known fraudsters (admin).",
    dependencies=[Depends(require("admin"))],
)
def list_watchlist(state: State, db: Db) -> JSONResponse:
    return answer(state, [r.to_dict() for r in db.watchlist()])


@router.post(
    "/v1/watchlist/{name}",
    tags=["watchlist"],
    summary="Put NAME on the watchlist with a voiceprint of the recordings (admin).",
    dependencies=[Depends(require("admin"))],
    status_code=201,
)
def add_to_watchlist(name: SpeakerName, audio: Recordings, state: State, db: Db) -> JSONResponse:
    """Every verify and identify of the tenant is then also scored against it; a match is
    decision KNOWN_FRAUDSTER. Adding to a name on the list replaces its voiceprint."""
    with uploads_of(state, audio) as uploads:
        record = db.watchlist_add(name, uploads)
        return answer(state, record.to_dict(), uploads, 201)


@router.delete(
    "/v1/watchlist/{name}",
    tags=["watchlist"],
    summary="Take NAME off the watchlist (admin).",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "NAME is not on the watchlist."}},
)
def remove_from_watchlist(name: SpeakerName, state: State, db: Db) -> JSONResponse:
    db.watchlist_remove(name)
    return answer(state, {"removed": name})
