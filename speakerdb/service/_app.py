"""The FastAPI application: its lifetime (database, warm model and index, micro-batcher),
error answers and authentication. The guard every request passes first is in
:mod:`speakerdb.service._guard`, the routes in :mod:`speakerdb.service._routes`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from speakerdb import __version__
from speakerdb.errors import SpeakerDBError
from speakerdb.service import _governance_routes  # noqa: F401  (registers audit, opt-out, expire)
from speakerdb.service._errors import (
    ServiceError,
    error_body,
    error_response,
    status_for,
)
from speakerdb.service._guard import Guard
from speakerdb.service._metrics import Metrics
from speakerdb.service._routes import router
from speakerdb.service._sessions import router as sessions_router
from speakerdb.service._settings import ServiceSettings
from speakerdb.service._state import ServiceState

__all__ = ["ServiceState", "app_from_environment", "create_app", "expire_periodically"]

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
        expiry = None
        if settings.expire_every_s > 0:
            expiry = asyncio.get_running_loop().create_task(
                expire_periodically(state.expire_due, settings.expire_every_s)
            )
        if settings.public_url:
            print(
                f"speakerdb serve: ready on {settings.public_url} (pid {os.getpid()})", flush=True
            )
        try:
            yield
        finally:
            if expiry is not None:
                expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expiry
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
    # The guard matches requests against the routes as written (not as FastAPI resolves
    # an included router), which is why they are included without a prefix.
    app.add_middleware(Guard, state=state, routes=router.routes)
    app.include_router(router)
    app.include_router(sessions_router)
    return app


async def expire_periodically(expire: Callable[[], int], every_s: float) -> None:
    """Run ``expire`` (blocking: in a worker thread) every ``every_s`` seconds until
    cancelled. The pass at start is :meth:`ServiceState.start`'s."""
    while True:
        await anyio.sleep(every_s)
        await anyio.to_thread.run_sync(expire)


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
