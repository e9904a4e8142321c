"""``speakerdb serve``: the HTTP service on uvicorn."""

from __future__ import annotations

import functools
import os
import socket
import sys
import tempfile

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    db_option,
    device_option,
    handles_errors,
    model_option,
    open_db,
    warn,
)
from speakerdb.errors import ConfigurationError, MissingDependencyError, UsageError


@click.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but a loopback address needs an API key first.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port to listen on; 0 lets the system choose a free one (logged at start).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes, each with its own model, index and micro-batcher.",
)
@model_option
@device_option
@click.option(
    "--max-request-mb",
    type=click.FloatRange(0.01, 4096),
    default=50.0,
    show_default=True,
    help="Largest request body (413 beyond).",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(1, 86_400),
    default=120.0,
    show_default=True,
    help="Longest recording accepted (413, code too_long, beyond).",
)
@click.option(
    "--max-files",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Most recordings in one request.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds to receive a request's headers (the connection is closed beyond) and "
    "its body (408 beyond), and to embed its recordings (503, code busy, beyond).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0, 1000),
    default=10.0,
    show_default=True,
    help="Longest wait of a batch for recordings of requests still arriving.",
)
@click.option(
    "--batches",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Embedding batches in flight at once (each embeds the recordings of the requests "
    "waiting when it starts).",
)
@click.option(
    "--upload-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Where uploads are written while their request runs (private folder, deleted "
    "after). Default: /dev/shm where there is one, else the temporary folder.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A host name clients may use in the Host header besides loopback names (e.g. the "
    "name a reverse proxy forwards); repeatable. Other names are refused (400, bad_host) "
    "on a loopback address, and on any address once one is given.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1, 10_000),
    default=32,
    show_default=True,
    help="Most live sessions (WebSocket /v1/sessions) at once, over all workers.",
)
@click.option(
    "--session-idle",
    "session_idle_s",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds a live session may wait for the client's next frame.",
)
@click.option(
    "--expire-every",
    "expire_every_s",
    type=click.FloatRange(0, 366 * 86400),
    default=3600.0,
    show_default=True,
    help="Seconds between retention passes: voiceprints whose retention ended are erased "
    "(every tenant; also once at start); 0 never.",
)
@click.option("--access-log/--no-access-log", default=True, help="Log every request.")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="The least severe messages the server logs (uvicorn's log level).",
)
@handles_errors
def serve(
    db_url: str | None,
    host: str,
    port: int,
    workers: int,
    model_name: str | None,
    device: str | None,
    max_request_mb: float,
    max_seconds: float,
    max_files: int,
    timeout_s: float,
    batch_wait_ms: float,
    batches: int,
    upload_dir: str | None,
    allowed_hosts: tuple[str, ...],
    max_sessions: int,
    session_idle_s: float,
    expire_every_s: float,
    access_log: bool,
    log_level: str,
) -> None:
    """Serve the database over HTTP (FastAPI on uvicorn): enroll, verify, identify,
    compare, manage speakers; /docs, /openapi.json, /healthz, /readyz, /metrics.

    Requests need `Authorization: Bearer KEY` with a key from `speakerdb keys create`.
    Until the first key is created the server only listens on a loopback address, and
    answers without authentication there; from then on keys are required, even if every
    key is revoked (`speakerdb keys allow-keyless` undoes that). It prints `speakerdb
    serve: ready on URL` once the model is loaded and the index warm. See docs/service.md.
    """
    try:
        import uvicorn

        from speakerdb.service import (
            SESSION_SLOTS_ENV,
            SETTINGS_ENV,
            DeadlineH11Protocol,
            ServiceSettings,
            create_app,
            is_loopback,
        )
    except ImportError as exc:
        raise MissingDependencyError(
            f"speakerdb serve needs the serve extra: pip install 'speakerdb[serve]' ({exc})"
        ) from None
    with open_db(db_url, model_name, device) as db:
        required = db.api_keys_required()
        has_keys = db.has_api_keys()
    loopback = is_loopback(host)
    if not loopback and not required:
        raise UsageError(
            f"refusing to listen on {host}: no API key exists, so anyone who can reach it "
            "could use the database; create one first (speakerdb keys create NAME --scope "
            "...) or listen on 127.0.0.1"
        )
    if not required:
        warn(
            "no API key exists: requests are answered without authentication (loopback "
            "only) until one is created with `speakerdb keys create`"
        )
    elif not has_keys:
        warn(
            "every API key was revoked: every request is refused until a key is created "
            "(speakerdb keys create), or keyless access allowed again (speakerdb keys "
            "allow-keyless)"
        )
    sock = _bind(host, port)
    actual_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    settings = ServiceSettings(
        db_url=db_url,
        model=model_name,
        device=device,
        auth="auto" if loopback else "required",
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_files=max_files,
        max_seconds=max_seconds,
        request_timeout_s=timeout_s,
        batch_wait_s=batch_wait_ms / 1000.0,
        batch_parallel=batches,
        upload_dir=upload_dir,
        public_url=f"http://{shown_host}:{actual_port}",
        host=host,
        port=actual_port,
        allowed_hosts=allowed_hosts,
        max_sessions=max_sessions,
        session_idle_s=session_idle_s,
        expire_every_s=expire_every_s,
    )
    common = {
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": 30,
        "lifespan": "on",
    }
    if workers == 1:
        # One process: its sessions' slots are its own (not a directory left in the
        # environment by something else).
        os.environ.pop(SESSION_SLOTS_ENV, None)
        config = uvicorn.Config(
            create_app(settings),
            # h11 with a deadline on request headers (slow or silent connections are closed)
            http=functools.partial(DeadlineH11Protocol, receive_timeout_s=timeout_s),  # type: ignore[arg-type]
            **common,  # type: ignore[arg-type]
        )
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        if not server.started:
            sys.exit(EXIT_ERROR)
        return
    from uvicorn.supervisors import Multiprocess

    from speakerdb.service import MULTIPROCESS_ENV

    os.environ[SETTINGS_ENV] = settings.to_json()
    config = uvicorn.Config(
        "speakerdb.service:app_from_environment",
        factory=True,
        workers=workers,
        # by name: the workers import it after they answer their health checks
        http="speakerdb.service._protocol:DeadlineH11Protocol",
        **common,  # type: ignore[arg-type]
    )
    # The workers' metrics meet in files here (a fresh directory: stale files of an
    # earlier run would add to the counts); the workers inherit the variable.
    # The live-session cap is the server's: every worker takes its sessions' slots from one
    # private directory (lock files; a worker that dies frees its own).
    with (
        tempfile.TemporaryDirectory(prefix="speakerdb-metrics-") as shared,
        tempfile.TemporaryDirectory(prefix="speakerdb-sessions-") as slots,
    ):
        os.environ[MULTIPROCESS_ENV] = shared
        os.environ[SESSION_SLOTS_ENV] = slots
        Multiprocess(config, sockets=[sock]).run()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it every answer written in two parts waits for a delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        # Listening from now on: connections made as soon as the "ready" line appears
        # (printed at the end of the app's startup, before uvicorn starts accepting) wait
        # in the kernel's queue rather than being refused.
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock
