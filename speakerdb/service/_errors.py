"""How errors become answers: ``{"error": {"code", "message"}}`` with a status that fits.

Library errors keep their code (the same as the CLI's ``--json``); the HTTP layer's own
refusals (authentication, limits, malformed requests) have codes of their own. A bug gives
a generic 500 whose traceback is logged by the server, never sent.

What a client reads never describes the server's insides: errors about the server's own
state (its database unreachable, its model not matching the database's after ``db
reembed``, its configuration) are answered with a fixed message per kind and logged in
full; every other message is passed through a :class:`Redactor`, which replaces the
database's URL, the model's path and any other absolute path or URL by a placeholder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from speakerdb import errors

__all__ = [
    "Redactor",
    "ServiceError",
    "error_body",
    "error_response",
    "json_ready",
    "library_error_body",
    "server_state_message",
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
        exc,
        errors.AlreadyExistsError
        | errors.ModelMismatchError
        | errors.EnrollmentRefusedError
        | errors.OptedOutError,
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


# Errors about the server's own state, and what a client is told instead of their message
# (which is written for the operator: it names the database, the model's file, commands).
_SERVER_STATE: tuple[tuple[type[errors.SpeakerDBError], str], ...] = (
    (
        errors.ModelMismatchError,
        "the database's voiceprints or calibration are not of the model this server "
        "loaded (after `speakerdb db reembed` the server needs a restart)",
    ),
    (errors.DatabaseNotFoundError, "the server's database does not exist"),
    (errors.StoreError, "the server cannot use its database right now; try again later"),
    (errors.ConfigurationError, "the server is not set up to do this"),
    (errors.ModelError, "the server cannot use its model"),
)


def server_state_message(exc: errors.SpeakerDBError) -> str | None:
    """The fixed message a client gets for an error about the server's own state (the
    details go to the server's log), or None for an error about the request."""
    for kind, message in _SERVER_STATE:
        if isinstance(exc, kind):
            return message
    return None


_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
# An absolute path: a slash at the start of a word, one more later (so "a/b" and "km/h"
# stay as they are).
_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"/(),;]+/[^\s'\"(),;]*")


def _placeholder(kind: str) -> Callable[[re.Match[str]], str]:
    def replace(found: re.Match[str]) -> str:
        text = found.group(0)
        kept = text.rstrip(".:")  # the sentence's punctuation stays
        return f"<{kind}>" + text[len(kept) :]

    return replace


class Redactor:
    """Replaces what a message must not show a client: the given strings (the database's
    URL as given and as displayed, the model's path ...), then any URL and any absolute
    path."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        found = {s for s in secrets if s and len(s) >= 3}
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<server>")
        text = _URL.sub(_placeholder("url"), text)
        return _PATH.sub(_placeholder("path"), text)


def library_error_body(
    exc: errors.SpeakerDBError, redact: Redactor | None = None
) -> dict[str, Any]:
    """``{"code", "message"[, "source"]}`` of a library error: the fixed message of an
    error about the server's state, else its own message passed through ``redact`` (None:
    as it is, for a caller that redacts the whole answer later)."""
    source = exc.source if isinstance(exc, errors.AudioError) else None
    message = server_state_message(exc)
    if message is None:
        message = redact(exc.message) if redact is not None else exc.message
    return error_body(exc.code, message, source)


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
