"""The routes: each parses the request, calls the SpeakerDB facade, and answers with the
fields of the CLI's ``--json`` (``to_dict()``) plus a decision word.

Decision words: verify and compare -- ACCEPT, REJECT, NOT_ENOUGH_SPEECH; verify of a name
nobody is enrolled under -- SPEAKER_NOT_ENROLLED (status 404); identify -- IDENTIFIED,
UNKNOWN_SPEAKER, NOT_ENOUGH_SPEECH. A recording with too little speech is an answer (200),
not an error: the request was right, the audio cannot decide. Other unusable recordings
are errors: 415 (not decodable), 413 (too long), 422 (invalid samples).

Several recordings in one request give a list with one object per recording, in order
(like the CLI with several files), each with its decision or its error; the status is 200.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, File, Form, Path, Request, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from speakerdb import (
    ApiKeyRecord,
    Comparison,
    EnrollmentReport,
    Identification,
    SpeakerDB,
    SpeakerRecord,
    Verification,
    errors,
)
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import AudioError, SpeakerNotFoundError, UsageError
from speakerdb.service._batcher import Upload
from speakerdb.service._errors import (
    ServiceError,
    error_response,
    json_ready,
    status_for,
)
from speakerdb.service._forms import InMemoryFormRoute
from speakerdb.service._guard import AUTHORIZED
from speakerdb.service._metrics import CONTENT_TYPE
from speakerdb.service._state import ServiceState
from speakerdb.service._uploads import received_uploads
from speakerdb.storage import SCOPES

__all__ = ["Db", "Recordings", "SpeakerName", "State", "answer", "require", "router", "uploads_of"]

router = APIRouter(route_class=InMemoryFormRoute)
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key made by `speakerdb keys create NAME --scope ...`.",
)
NOT_ENOUGH_SPEECH_CODES = frozenset({errors.NoSpeechError.code, errors.TooLittleSpeechError.code})
_AUDIO_ERRORS: dict[str, type[AudioError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, AudioError)
}


def _service(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def _state(request: Request) -> ServiceState:
    # async: a plain dependency would cost every request a trip through the thread pool
    return _service(request)


State = Annotated[ServiceState, Depends(_state)]


async def _tenant_db(request: Request) -> SpeakerDB:
    """The database as the request's key sees it (its tenant only; see
    :meth:`ServiceState.tenant_db`). The guard admitted the request and recorded its key;
    a request it did not admit reaches no database unless keys are not required."""
    state = _service(request)
    admitted = request.scope.get(AUTHORIZED)
    if admitted is None:
        if state.auth_required():
            raise ServiceError(401, "unauthorized", "an API key is needed")
        return state.tenant_db(None)
    key: ApiKeyRecord | None = admitted[1]
    return state.tenant_db(key)


Db = Annotated[SpeakerDB, Depends(_tenant_db)]


def require(*scopes: str) -> Callable[..., ApiKeyRecord | None]:
    """A dependency admitting requests whose key has any of ``scopes`` (see
    :meth:`ServiceState.authorize`); its value is the key (None: no key is needed).

    The guard reads ``scopes`` off it and authenticates before the body is read (see
    :mod:`speakerdb.service._guard`); this then only hands on the key it admitted (and
    checks for itself should a request ever reach it another way)."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKeyRecord | None:
        admitted = request.scope.get(AUTHORIZED)
        if admitted is not None and admitted[0] == scopes:
            key: ApiKeyRecord | None = admitted[1]
            return key
        return _service(request).authorize(credentials.credentials if credentials else None, scopes)

    check.scopes = scopes  # type: ignore[attr-defined]
    return check


SpeakerName = Annotated[str, Path(description="The speaker's name.", max_length=255)]
Threshold = Annotated[
    float | None,
    Form(
        description="Decision threshold (default: the database's calibrated one, else the model's)."
    ),
]
Prior = Annotated[
    float | None,
    Form(
        description="Operating point: the prior probability of the claimed speaker (unit costs); "
        "the decision threshold on the LLR is then its Bayes threshold.",
        gt=0,
        lt=1,
    ),
]
Far = Annotated[
    float | None,
    Form(
        description="Operating point: a target false-accept rate from the calibration's table.",
        gt=0,
        lt=1,
    ),
]
Norm = Annotated[
    Literal["none", "asnorm"],
    Form(description="Score normalisation: asnorm against the other enrolled speakers."),
]


def _decision_options(
    threshold: Threshold = None, prior: Prior = None, far: Far = None, norm: Norm = "none"
) -> DecisionOptions:
    """The decision routes' request model: their form fields read once into the options
    that travel unchanged to the rule (a bad combination is a 400 before any upload is read)."""
    return DecisionOptions.of(threshold, prior=prior, far=far, norm=norm)


Decision = Annotated[DecisionOptions, Depends(_decision_options)]
Recordings = Annotated[
    list[UploadFile], File(description="One or more recordings (any format; by content).")
]

_AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid API key."},
    403: {"description": "The key's scopes do not allow this."},
    413: {"description": "Request or recording too large or too long."},
    415: {"description": "A recording is not decodable audio."},
    422: {"description": "Invalid request or invalid audio samples."},
}


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def uploads_of(state: ServiceState, files: Sequence[UploadFile]) -> Iterator[list[Upload]]:
    settings = state.settings
    if not files:
        raise ServiceError(422, "validation", "no recording was uploaded")
    if len(files) > settings.max_files:
        raise ServiceError(
            413, "too_many_files", f"at most {settings.max_files} recordings per request"
        )
    with received_uploads(
        [(f.filename, f.file) for f in files],
        max_seconds=settings.max_seconds,
        folder=settings.upload_dir,
    ) as uploads:
        yield uploads


def _scrubbed(value: Any, uploads: Sequence[Upload]) -> Any:
    """``value`` with every temporary path replaced by its upload's label: nothing about the
    server's file system reaches an answer, whatever a lower layer put in a message."""
    if isinstance(value, str):
        for upload in uploads:
            value = value.replace(str(upload.path), upload.label)
        return value
    if isinstance(value, dict):
        return {k: _scrubbed(v, uploads) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, uploads) for v in value]
    return value


def _redacted(value: Any, state: ServiceState) -> Any:
    """``value`` with every message (of errors, rejected recordings, warnings) passed
    through the server's redactor (see :class:`speakerdb.service._errors.Redactor`);
    speakers' metadata is left as it was stored."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "message" and isinstance(item, str):
                out[key] = state.redact(item)
            elif key == "metadata":
                out[key] = item
            else:
                out[key] = _redacted(item, state)
        return out
    if isinstance(value, list):
        return [_redacted(v, state) for v in value]
    return value


def answer(
    state: ServiceState, document: Any, uploads: Sequence[Upload] = (), status: int = 200
) -> JSONResponse:
    cleaned = _redacted(_scrubbed(json_ready(document), uploads), state)
    return JSONResponse(cleaned, status_code=status)


def _failed(state: ServiceState, error: AudioError) -> dict[str, Any]:
    body: dict[str, Any] = {"source": error.source, "error": state.error_body(error, False)}
    if error.code in NOT_ENOUGH_SPEECH_CODES:
        body["decision"] = "NOT_ENOUGH_SPEECH"
    return body


def _decided(
    state: ServiceState, result: Verification | Comparison | Identification | AudioError
) -> dict[str, Any]:
    if isinstance(result, AudioError):
        return _failed(state, result)
    document = result.to_dict()
    if isinstance(result, Verification):
        # SPOOF_DETECTED where the database's countermeasure caught an attack.
        document["decision"] = result.decision or ("ACCEPT" if result.accepted else "REJECT")
    elif isinstance(result, Comparison):
        document["decision"] = result.decision or ("ACCEPT" if result.same_speaker else "REJECT")
    else:
        document["decision"] = result.decision or (
            "IDENTIFIED" if result.best is not None else "UNKNOWN_SPEAKER"
        )
    if not isinstance(result, Comparison) and result.decision == "SPOOF_DETECTED":
        route = "verify" if isinstance(result, Verification) else "identify"
        state.metrics.spoof_detected.labels(route).inc()
    return document


def _per_file(
    state: ServiceState,
    results: Sequence[Verification | Comparison | Identification | AudioError],
    uploads: Sequence[Upload],
) -> JSONResponse:
    """One object for one recording (an unusable one as its error status, unless it only
    lacks speech), a list for several."""
    if len(results) == 1:
        only = results[0]
        if isinstance(only, AudioError) and only.code not in NOT_ENOUGH_SPEECH_CODES:
            body = state.error_body(only, redact=False)
            return answer(state, {"error": body}, uploads, status_for(only))
        return answer(state, _decided(state, only), uploads)
    return answer(state, [_decided(state, r) for r in results], uploads)


# --- health, metrics ----------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"], summary="The process is up.")
async def healthz() -> dict[str, str | int]:
    """Answers as long as the process runs; ``pid`` tells the workers apart."""
    return {"status": "ok", "pid": os.getpid()}


@router.get(
    "/readyz",
    tags=["operations"],
    summary="Ready: database reachable, model loaded and the database's, index caught up.",
    responses={503: {"description": "Not ready (see checks)."}},
)
def readyz(state: State) -> JSONResponse:
    """Ready when a lookup would be answered: the database answers, the model is loaded
    and is the one whose voiceprints the database holds (after ``db reembed`` by another
    process it is not: every lookup would be refused until the server restarts), and the
    index has caught up with the change log. Nothing here needs a key, so nothing here
    says what the database holds (no counts)."""
    checks: dict[str, Any] = {}
    if not state.ready:
        checks["startup"] = "the database and model are still loading"
        return JSONResponse({"status": "starting", "checks": checks}, status_code=503)
    db = state.db
    ready = db.model_loaded
    checks["model"] = {"status": "ok" if ready else "not loaded", "name": db.identity.label}
    try:
        current = db.store.current_model()
        checks["database"] = {"status": "ok"}
    except errors.SpeakerDBError as exc:
        checks["database"] = {"status": "error", "message": state.error_body(exc)["message"]}
        current, ready = None, False
    if current is not None and not current.same_model(db.identity):
        checks["model"] = {
            "status": "mismatch",
            "name": db.identity.label,
            "database": current.label,
            "message": "the database now holds voiceprints of another model (speakerdb db "
            "reembed): every lookup is refused until the server is restarted",
        }
        ready = False
    elif ready and current is not None:
        try:
            db.store.index_status()  # catches up with the change log first
            # Not its kind or size: an IVF index's lists tell how many speakers there are.
            checks["index"] = {
                "status": "ok",
                "rebuilding": db.store.index_maintenance_running(),
            }
        except errors.SpeakerDBError as exc:
            checks["index"] = {"status": "error", "message": state.error_body(exc)["message"]}
            ready = False
    state.metrics.index_rebuilds.set(1 if db.store.index_maintenance_running() else 0)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics (text format).",
    response_class=Response,
)
def metrics(state: State) -> Response:
    if state.ready:
        state.metrics.index_rebuilds.set(1 if state.db.store.index_maintenance_running() else 0)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


# --- decisions ----------------------------------------------------------------------------------


@router.post(
    "/v1/speakers/{name}/verify",
    tags=["decisions"],
    summary="Is each recording the enrolled speaker NAME?",
    dependencies=[Depends(require("verify"))],
    responses={**_AUDIO_RESPONSES, 404: {"description": "SPEAKER_NOT_ENROLLED."}},
)
def verify(
    name: SpeakerName,
    audio: Recordings,
    state: State,
    db: Db,
    options: Decision,
) -> JSONResponse:
    """Scores each recording against the speaker's voiceprint: ACCEPT iff score >=
    threshold. One recording: one object; several: a list."""
    with uploads_of(state, audio) as uploads:
        try:
            results = db.verify_many(name, uploads, options=options)
        except SpeakerNotFoundError as exc:
            state.metrics.errors.labels(exc.code).inc()
            return error_response(
                404, state.error_body(exc), decision="SPEAKER_NOT_ENROLLED", speaker=name
            )
        return _per_file(state, results, uploads)


@router.post(
    "/v1/identify",
    tags=["decisions"],
    summary="Who is speaking in each recording, among everyone enrolled?",
    dependencies=[Depends(require("identify"))],
    responses=_AUDIO_RESPONSES,
)
def identify(
    audio: Recordings,
    state: State,
    db: Db,
    options: Decision,
    top_k: Annotated[int, Form(ge=1, le=1000, description="Candidates to list.")] = 5,
) -> JSONResponse:
    """Open set: ``best`` is the top candidate if it reaches the threshold (IDENTIFIED),
    else null (UNKNOWN_SPEAKER); ``matches`` are the top-k candidates, best first."""
    with uploads_of(state, audio) as uploads:
        results = db.identify_many(uploads, top_k, options=options)
        return _per_file(state, results, uploads)


@router.post(
    "/v1/compare",
    tags=["decisions"],
    summary="Are two recordings the same speaker?",
    dependencies=[Depends(require("verify"))],
    responses=_AUDIO_RESPONSES,
)
def compare(
    a: Annotated[UploadFile, File(description="The first recording.")],
    b: Annotated[UploadFile, File(description="The second recording.")],
    state: State,
    db: Db,
    options: Decision,
) -> JSONResponse:
    """File against file with the one rule: ACCEPT iff score >= threshold."""
    with uploads_of(state, [a, b]) as uploads:
        result = db.compare_batch([(uploads[0], uploads[1])], options=options)[0]
        return _per_file(state, [result], uploads)


# --- enrollment and management ------------------------------------------------------------------


@router.post(
    "/v1/speakers/{name}/enroll",
    tags=["speakers"],
    summary="Enroll recordings of speaker NAME.",
    status_code=200,
    responses={
        **_AUDIO_RESPONSES,
        201: {"description": "The speaker was created."},
        403: {"description": "The key's scopes do not allow this (overwrite, force: admin)."},
        409: {"description": "Refused: recordings do not match the enrolled voiceprint."},
    },
)
def enroll(
    name: SpeakerName,
    audio: Recordings,
    state: State,
    db: Db,
    key: Annotated[ApiKeyRecord | None, Depends(require("enroll"))],
    mode: Annotated[
        Literal["append", "overwrite", "skip"],
        Form(
            description="append: add (create if new); overwrite: replace the speaker's "
            "recordings (admin scope); skip: leave an existing speaker untouched."
        ),
    ] = "append",
    metadata: Annotated[
        str | None, Form(description="A JSON object stored with the speaker.")
    ] = None,
    force: Annotated[
        bool,
        Form(
            description="Admin scope: add recordings to an enrolled speaker even when they "
            "do not match its voiceprint."
        ),
    ] = False,
    consent: Annotated[
        str | None, Form(max_length=2000, description="The consent given (recorded text).")
    ] = None,
    expires_after: Annotated[
        str | None, Form(max_length=16, description="Retention from now: 3y, 90d, 2w, 12h.")
    ] = None,
) -> JSONResponse:
    """The report of the CLI's ``enroll --json``: every recording accepted, duplicate,
    rejected (with its reason) or skipped, and the speaker's totals. 201 when the speaker
    was created; when no recording was usable, nothing is stored and the status is that of
    the first rejection (with its error). Recordings added to an enrolled speaker must
    match its voiceprint as it was before the request: otherwise nothing is stored and the
    answer is 409 (code ``enrollment_refused``) with the report, each new recording
    "refused". Overwriting and ``force`` need the admin scope."""
    if (mode == "overwrite" or force) and key is not None and not key.allows("admin"):
        what = "mode overwrite (it replaces every recording)" if mode == "overwrite" else "force"
        raise ServiceError(
            403,
            "forbidden",
            f"key {key.name!r} (scopes: {', '.join(key.scopes)}) may not use {what}: it needs "
            "the scope admin",
        )
    meta = _metadata(metadata)
    with uploads_of(state, audio) as uploads:
        try:
            report = db.enroll(
                name,
                uploads,
                mode=mode,
                metadata=meta,
                force=force or mode == "overwrite",
                consent=consent,
                expires_after=expires_after,
            )
        except errors.EnrollmentRefusedError as exc:
            state.metrics.errors.labels(exc.code).inc()
            refused = exc.report.to_dict() if isinstance(exc.report, EnrollmentReport) else {}
            body = state.error_body(exc, redact=False)  # the answer is redacted as a whole
            return answer(state, {**refused, "error": body}, uploads, 409)
        document = report.to_dict()
        status = 201 if report.created else 200
        rejected = [i for i in report.inputs if i.status == "rejected"]
        spoofs = sum(1 for i in rejected if i.reason == errors.SpoofDetectedError.code)
        if spoofs:
            state.metrics.spoof_detected.labels("enroll").inc(spoofs)
        if rejected and len(rejected) == len(report.inputs):
            first = rejected[0]
            error_class = _AUDIO_ERRORS.get(first.reason or "", AudioError)
            status = status_for(error_class(first.source, first.message or ""))
            document["error"] = {
                "code": first.reason,
                "message": f"{first.source}: {first.message}",
                "source": first.source,
            }
        return answer(state, document, uploads, status)


def _metadata(text: str | None) -> dict[str, Any] | None:
    """The form field parsed; the library checks what may be stored (depth, size, text)."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        raise UsageError("metadata is nested too deeply") from None
    except ValueError as exc:
        raise UsageError(f"metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("metadata must be a JSON object")
    return value


Reader = Annotated[ApiKeyRecord | None, Depends(require("verify", "identify"))]

# What a key without the admin scope reads of a speaker: enough to know it is enrolled and
# how well. Its metadata, and its recordings' sources (server paths) and audio sha256 (with
# which the holder of a recording could test whether it is enrolled) are the admin's.
_READER_FIELDS = ("name", "status", "utterances")


def _sees_everything(key: ApiKeyRecord | None) -> bool:
    """Admin keys, and the owner of a keyless loopback server, read every field."""
    return key is None or key.allows("admin")


def _without_id(document: dict[str, Any]) -> dict[str, Any]:
    """A record without its row id: ids number the rows of every tenant, so a new one
    would tell a key how much other tenants enrolled."""
    return {field: value for field, value in document.items() if field != "id"}


def _speaker_view(record: SpeakerRecord, key: ApiKeyRecord | None) -> dict[str, Any]:
    document = _without_id(record.to_dict())
    if _sees_everything(key):
        return document
    return {field: document[field] for field in _READER_FIELDS}


@router.get(
    "/v1/speakers",
    tags=["speakers"],
    summary="Every enrolled speaker (admin keys: with metadata and dates).",
)
def list_speakers(state: State, db: Db, key: Reader) -> JSONResponse:
    return answer(state, [_speaker_view(r, key) for r in db.speakers()])


@router.get(
    "/v1/speakers/{name}",
    tags=["speakers"],
    summary="One speaker (admin keys: with metadata and its enrolled recordings).",
    responses={404: {"description": "No such speaker."}},
)
def show_speaker(name: SpeakerName, state: State, db: Db, key: Reader) -> JSONResponse:
    record = db.speaker(name)
    document = _speaker_view(record, key)
    if _sees_everything(key):
        document["recordings"] = [_without_id(u.to_dict()) for u in db.utterances(record.name)]
    return answer(state, document)


class Rename(BaseModel):
    new_name: str = Field(min_length=1, max_length=255, description="The new name.")


@router.post(
    "/v1/speakers/{name}/rename",
    tags=["speakers"],
    summary="Rename a speaker (the voiceprint is kept).",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "No such speaker."}, 409: {"description": "Name taken."}},
)
def rename_speaker(
    name: SpeakerName, body: Annotated[Rename, Body()], state: State, db: Db
) -> JSONResponse:
    return answer(state, _without_id(db.rename(name, body.new_name).to_dict()))


@router.delete(
    "/v1/speakers/{name}",
    tags=["speakers"],
    summary="Delete a speaker and every voiceprint of it.",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "No such speaker."}},
)
def delete_speaker(name: SpeakerName, state: State, db: Db) -> JSONResponse:
    """Removes the rows and embedding bytes from SQL and rewrites the index file without
    them, as ``speakerdb speakers delete`` does (see the README on what PostgreSQL keeps
    until ``speakerdb db compact``)."""
    return answer(state, {"deleted": _without_id(db.delete(name).to_dict())})


# --- keys ---------------------------------------------------------------------------------------


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="A name for the key.")
    scopes: list[str] = Field(
        min_length=1, max_length=8, description=f"Any of {', '.join(SCOPES)}, or read."
    )


@router.get(
    "/v1/keys",
    tags=["keys"],
    summary="Every API key (without secrets).",
    dependencies=[Depends(require("admin"))],
)
def list_keys(state: State, db: Db) -> JSONResponse:
    return answer(state, [k.to_dict() for k in db.api_keys()])


@router.post(
    "/v1/keys",
    tags=["keys"],
    summary="Create an API key; its secret is in this answer only.",
    dependencies=[Depends(require("admin"))],
    status_code=201,
    responses={409: {"description": "A key of that name exists."}},
)
def create_key(body: Annotated[NewKey, Body()], state: State, db: Db) -> JSONResponse:
    made = db.create_key(body.name, body.scopes)
    return answer(state, made.record.to_dict() | {"key": made.secret}, status=201)


@router.delete(
    "/v1/keys/{key_name}",
    tags=["keys"],
    summary="Revoke an API key.",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "No such key."}},
)
def revoke_key(
    key_name: Annotated[str, Path(max_length=64, description="The key's name.")],
    state: State,
    db: Db,
) -> JSONResponse:
    return answer(state, {"revoked": db.revoke_key(key_name).to_dict()})
