"""The FastAPI application: its lifetime (database, warm model and index, micro-batcher),
the guard every request passes (size and time limits, metrics, the catch-all), error
answers and authentication. The routes are in :mod:`speakerdb.service._routes`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speakerdb import ApiKeyRecord, SpeakerDB, __version__
from speakerdb.errors import SpeakerDBError
from speakerdb.service._batcher import BatchingEmbedder
from speakerdb.service._errors import (
    ServiceError,
    error_body,
    error_response,
    library_error_body,
    status_for,
)
from speakerdb.service._metrics import Metrics
from speakerdb.service._settings import ServiceSettings

__all__ = ["ServiceState", "app_from_environment", "create_app"]

log = logging.getLogger("speakerdb.service")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation",
}
_EMBEDDING_SUFFIXES = ("/verify", "/enroll")
_EMBEDDING_PATHS = ("/v1/identify", "/v1/compare")


class ServiceState:
    """What the routes of one app share: settings, the database (whose model is the
    micro-batcher), metrics, and whether keys are required."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._db: SpeakerDB | None = None
        self.batcher: BatchingEmbedder | None = None
        self._keys_seen = settings.auth == "required"
        self._keys_lock = threading.Lock()

    @property
    def db(self) -> SpeakerDB:
        if self._db is None:
            raise ServiceError(503, "starting", "the server is starting; try again shortly")
        return self._db

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
            if s.auth == "auto" and db.has_api_keys():
                self._keys_seen = True
        except BaseException:
            opened.close()
            if self.batcher is not None:
                self.batcher.close()
            raise
        self._db = db

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self._db is not None:
            self._db.close()

    # --- authentication -----------------------------------------------------------------------

    def auth_required(self) -> bool:
        """Keys are required when the settings say so, and in "auto" mode from the moment
        any key exists (never again open after that, even if every key is revoked)."""
        if self._keys_seen:
            return True
        with self._keys_lock:
            if not self._keys_seen and self.db.has_api_keys():
                self._keys_seen = True
        return self._keys_seen

    def authorize(self, secret: str | None, scopes: Sequence[str]) -> ApiKeyRecord | None:
        """The key presented, if it allows any of ``scopes``; None when no key is needed.
        Raises ServiceError 401 (no key, or not a valid one) or 403 (outside its scopes)."""
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


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The HTTP application for ``settings`` (defaults: the default database, keys
    required). The database opens and the model loads when the app starts (its lifespan);
    until then every /v1 route answers 503."""
    settings = settings or ServiceSettings()
    metrics = Metrics()
    state = ServiceState(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(state.start)
        if settings.public_url:
            print(
                f"speakerdb serve: ready on {settings.public_url} (pid {os.getpid()})", flush=True
            )
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.stop)
            metrics.worker_exited()

    app = FastAPI(
        title="speakerdb",
        version=__version__,
        summary="Speaker enrollment, verification and identification over HTTP.",
        description=(
            "Send `Authorization: Bearer KEY` with a key made by `speakerdb keys create`. "
            "Recordings are multipart uploads in any format FFmpeg or libsndfile decodes "
            '(judged by content, not by name). Errors are `{"error": {"code", '
            '"message"}}`.'
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    _install_docs(app)
    _install_error_handlers(app, metrics)
    app.add_middleware(_Guard, state=state)
    from speakerdb.service._routes import router

    app.include_router(router)
    return app


DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI's script and style are served from (no CDN: servers are often
offline, and a docs page that fetches code from the internet is not wanted there)."""


def _install_docs(app: FastAPI) -> None:
    """``/docs``: the Swagger UI, with its assets served by this server from the
    ``fastapi-offline`` package (a dependency of the serve extra)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    try:
        assets = importlib.resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        assets = None
    if assets is None or not assets.is_dir():
        # An installation without the extra's assets: the usual page, which fetches them
        # from a CDN.
        app.get("/docs", include_in_schema=False)(
            lambda: get_swagger_ui_html(openapi_url="/openapi.json", title="speakerdb")
        )
        return
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="speakerdb - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )


def app_from_environment() -> FastAPI:
    """The app of a worker process of ``speakerdb serve --workers N`` (settings from
    ``$SPEAKERDB_SERVE_SETTINGS``)."""
    return create_app(ServiceSettings.from_environment())


# --- errors -------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def answer(status: int, body: dict[str, Any], headers: Any = None) -> JSONResponse:
        metrics.errors.labels(body["code"]).inc()
        return error_response(status, body, headers)

    async def library(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpeakerDBError)
        return answer(status_for(exc), library_error_body(exc))

    async def http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, ServiceError):
            return answer(exc.status, error_body(exc.code, exc.message), exc.headers)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return answer(exc.status_code, error_body(code, str(exc.detail)), exc.headers)

    async def validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for item in exc.errors()[:5]:
            where = ".".join(str(part) for part in item.get("loc", ()))
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        message = "; ".join(problems) or "invalid request"
        return answer(422, error_body("validation", message))

    app.add_exception_handler(SpeakerDBError, library)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)


# --- the guard ----------------------------------------------------------------------------------


class _Guard:
    """Pure ASGI middleware around every request: the body size limit (413, from the
    declared length before reading and from the bytes as they come), the time limit on
    receiving the body (408), the micro-batcher's announcement of requests that will embed
    recordings, metrics, and the catch-all for bugs (logged with their traceback, answered
    with a generic 500)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

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

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        metrics.in_flight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > settings.max_request_bytes:
                error = _too_large(settings.max_request_bytes)
                metrics.errors.labels(error.code).inc()
                response = error_response(413, error_body(error.code, error.message))
                await response(scope, receive, tracking_send)
                return
            batcher = self.state.batcher
            announce = (
                batcher.announce()
                if batcher is not None and _embeds(scope)
                else contextlib.nullcontext()
            )
            with announce:
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


def _too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, "too_large", f"the request is larger than this server accepts ({limit} bytes)"
    )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _embeds(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return scope.get("method") == "POST" and (
        path in _EMBEDDING_PATHS or path.endswith(_EMBEDDING_SUFFIXES)
    )
