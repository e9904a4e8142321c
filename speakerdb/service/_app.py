"""The FastAPI application: its lifetime (database, warm model and index, micro-batcher),
error answers and authentication. The guard every request passes first is in
:mod:`speakerdb.service._guard`, the routes in :mod:`speakerdb.service._routes`."""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from speakerdb import ApiKeyRecord, SpeakerDB, __version__
from speakerdb.errors import SpeakerDBError
from speakerdb.service._batcher import BatchingEmbedder
from speakerdb.service._errors import (
    Redactor,
    ServiceError,
    error_body,
    error_response,
    library_error_body,
    server_state_message,
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

    def stop(self) -> None:
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
    _install_error_handlers(app, state)
    from speakerdb.service import _governance_routes  # noqa: F401  (audit, opt-out, expire)
    from speakerdb.service._guard import Guard
    from speakerdb.service._routes import router

    # The guard matches requests against the routes as written (not as FastAPI resolves
    # an included router), which is why they are included without a prefix.
    app.add_middleware(Guard, state=state, routes=router.routes)
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


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    metrics = state.metrics

    def answer(status: int, body: dict[str, Any], headers: Any = None) -> JSONResponse:
        metrics.errors.labels(body["code"]).inc()
        return error_response(status, body, headers)

    async def library(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpeakerDBError)
        return answer(status_for(exc), state.error_body(exc))

    async def http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, ServiceError):
            return answer(exc.status, error_body(exc.code, exc.message), exc.headers)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = state.redact(str(exc.detail))
        return answer(exc.status_code, error_body(code, detail), exc.headers)

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
