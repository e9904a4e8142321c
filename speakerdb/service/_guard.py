"""The guard: pure ASGI middleware every HTTP request passes before any route sees it.

In order, before a byte of the body is read:

1. the Host header (DNS rebinding) and, for requests that may change something, where a
   web browser says the request comes from (see :mod:`speakerdb.service._origin`);
2. the declared body size (413);
3. authentication and the key's scope, for the route the request is for: a request
   refused here (401, 403) never has its body read. When more than a little body is still
   on its way, the answer closes the connection (``Connection: close``) rather than
   receiving and discarding it.

Then, while the route runs: the body size as the bytes come (413) and the time limit on
receiving it (408); the micro-batcher's announcement of requests that will embed
recordings; metrics; and the catch-all for bugs (logged with their traceback, answered with
a generic 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speakerdb import ApiKeyRecord, acting_as
from speakerdb.errors import SpeakerDBError
from speakerdb.service._errors import ServiceError, error_body, error_response, status_for
from speakerdb.service._origin import bad_host, cross_origin

if TYPE_CHECKING:
    from speakerdb.service._state import ServiceState

__all__ = ["AUTHORIZED", "NO_KEY_ACTOR", "Guard"]

log = logging.getLogger("speakerdb.service")

AUTHORIZED = "speakerdb.authorized"
"""Scope key: ``(scopes, key)`` once the guard has admitted the request for ``scopes``
(key None: no key needed); the routes' own dependency then trusts it."""

_EMBEDDING_SUFFIXES = ("/verify", "/enroll")
_EMBEDDING_PATHS = ("/v1/identify", "/v1/compare")
# A refused request's body up to this size is received and discarded (the connection stays
# usable, and the client surely reads the answer); beyond it the connection is closed.
_DRAIN_BYTES = 64 * 1024


class Guard:
    """See the module docstring. ``routes``: the app's routes, whose dependencies say which
    scopes each needs (a dependency made by ``require(...)`` carries ``scopes``)."""

    def __init__(self, app: ASGIApp, state: ServiceState, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = routes
        self._scopes_of: dict[int, tuple[str, ...] | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings, metrics = self.state.settings, self.state.metrics
        started_at = time.perf_counter()
        deadline = time.monotonic() + settings.request_timeout_s
        status = 500
        response_started = False
        received = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise ServiceError(
                    408,
                    "timeout",
                    f"the request body did not arrive within {settings.request_timeout_s:g} s",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > settings.max_request_bytes:
                    raise _too_large(settings.max_request_bytes)
                body_done = not message.get("more_body", False)
            return message

        request_id = _request_id(scope)

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode("ascii", "replace")),
                    ],
                }
            await send(message)

        metrics.in_flight.inc()
        try:
            refusal = await self._admit(scope)
            if refusal is not None:
                refused_status, body, headers = refusal
                metrics.errors.labels(body["code"]).inc()
                if _body_pending(scope):
                    headers = {**headers, "Connection": "close"}
                response = error_response(refused_status, body, headers)
                await response(scope, receive, tracking_send)
                return
            batcher = self.state.batcher
            announce = (
                batcher.announce()
                if batcher is not None and _embeds(scope)
                else contextlib.nullcontext()
            )
            admitted = scope.get(AUTHORIZED)
            key = admitted[1] if admitted is not None else None
            # The audit log's actor and request id for everything this request does (the
            # route's worker thread inherits this context).
            with announce, acting_as(key.name if key is not None else NO_KEY_ACTOR, request_id):
                await self.app(scope, guarded_receive, tracking_send)
        except Exception:
            log.exception("internal error answering %s %s", scope["method"], scope["path"])
            if not response_started:
                metrics.errors.labels("internal").inc()
                response = error_response(
                    500, error_body("internal", "internal error (logged by the server)")
                )
                await response(scope, receive, tracking_send)
        finally:
            metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            metrics.requests.labels(scope["method"], template, str(status)).inc()
            metrics.latency.labels(scope["method"], template).observe(
                time.perf_counter() - started_at
            )

    async def _admit(self, scope: Scope) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """(status, error body, headers) of a refusal before the body is read, or None
        (then, for a route that needs a key, ``scope[AUTHORIZED]`` is set)."""
        settings = self.state.settings
        headers = scope.get("headers", ())
        why = bad_host(headers, settings)
        if why is not None:
            return 400, error_body("bad_host", why), {}
        why = cross_origin(scope["method"], headers, settings)
        if why is not None:
            message = f"{why} is refused: this server acts only on its own pages and programs"
            return 403, error_body("cross_origin", message), {}
        declared = _content_length(scope)
        if declared is not None and declared > settings.max_request_bytes:
            error = _too_large(settings.max_request_bytes)
            return 413, error_body(error.code, error.message), {}
        route, scopes = self._route(scope)
        if route is None or scopes is None:
            return None
        scope.setdefault("route", route)  # a refused request is still counted by its route
        try:
            key: ApiKeyRecord | None = await anyio.to_thread.run_sync(
                self.state.authorize, _bearer(headers), scopes
            )
        except ServiceError as exc:
            return exc.status, error_body(exc.code, exc.message), dict(exc.headers or {})
        except SpeakerDBError as exc:  # the database could not be asked
            return status_for(exc), self.state.error_body(exc), {}
        scope[AUTHORIZED] = (scopes, key)
        return None

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, tuple[str, ...] | None]:
        """The route of this request and the scopes it needs (None: it needs no key; no
        route: none matches, and the router answers)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                if id(route) not in self._scopes_of:
                    self._scopes_of[id(route)] = _required_scopes(route)
                return route, self._scopes_of[id(route)]
        return None, None


def _required_scopes(route: BaseRoute) -> tuple[str, ...] | None:
    dependant = getattr(route, "dependant", None)
    pending = list(getattr(dependant, "dependencies", ()))
    while pending:
        dependency = pending.pop()
        scopes = getattr(dependency.call, "scopes", None)
        if scopes is not None:
            return tuple(scopes)
        pending.extend(dependency.dependencies)
    return None


NO_KEY_ACTOR = "http:no-key"  # the actor of a keyless (loopback) server's requests
_MAX_REQUEST_ID = 64


def _request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is short printable ASCII, else a new one."""
    given = _header(scope, b"x-request-id")
    if given is not None:
        text = given.decode("latin-1").strip()
        if 0 < len(text) <= _MAX_REQUEST_ID and text.isascii() and text.isprintable():
            return text
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> bytes | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value
    return None


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _body_pending(scope: Scope) -> bool:
    """Whether more than a little request body would have to be received and discarded."""
    if _header(scope, b"transfer-encoding") is not None:
        return True
    declared = _content_length(scope)
    return declared is not None and declared > _DRAIN_BYTES


def _too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, "too_large", f"the request is larger than this server accepts ({limit} bytes)"
    )


def _embeds(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return scope.get("method") == "POST" and (
        path in _EMBEDDING_PATHS or path.endswith(_EMBEDDING_SUFFIXES)
    )
