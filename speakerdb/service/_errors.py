"""How errors become answers: ``{"error": {"code", "message"}}`` with a status that fits.

Library errors keep their code (the same as the CLI's ``--json``); the HTTP layer's own
refusals (authentication, limits, malformed requests) have codes of their own. A bug gives
a generic 500 whose traceback is logged by the server, never sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from speakerdb import errors

__all__ = [
    "ServiceError",
    "error_body",
    "error_response",
    "json_ready",
    "library_error_body",
    "status_for",
]


class ServiceError(HTTPException):
    """A refusal of the HTTP layer: status, code and a one-line message. An HTTPException,
    so that raised while FastAPI reads the body (limits) it stays what it is."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = " ".join(message.split())
        super().__init__(status_code=status, detail=self.message, headers=dict(headers or {}))


def status_for(exc: errors.SpeakerDBError) -> int:
    """The HTTP status of a library error: the client's fault gets a 4xx, the server's
    state (database unreachable, model missing) a 5xx."""
    if isinstance(exc, errors.TooLongError):
        return 413
    if isinstance(exc, errors.AudioDecodeError):
        return 415
    if isinstance(exc, errors.AudioError):
        return 422
    if isinstance(exc, errors.DatabaseNotFoundError):
        return 503
    if isinstance(exc, errors.NotFoundError):
        return 404
    if isinstance(
        exc, errors.AlreadyExistsError | errors.ModelMismatchError | errors.EnrollmentRefusedError
    ):
        return 409
    if isinstance(exc, errors.BusyError):
        return 503
    if isinstance(exc, errors.StoreError | errors.ConfigurationError | errors.ModelError):
        return 503
    return 400  # UsageError and anything else the caller asked for wrongly


def error_body(code: str, message: str, source: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if source is not None:
        body["source"] = source
    return body


def library_error_body(exc: errors.SpeakerDBError) -> dict[str, Any]:
    source = exc.source if isinstance(exc, errors.AudioError) else None
    return error_body(exc.code, exc.message, source)


def error_response(
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": body, **extra}, status_code=status, headers=dict(headers or {}))


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON: non-finite floats become null (JSON has no NaN), datetimes
    ISO 8601 text, numpy values lists or numbers, paths text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return json_ready(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value
