"""Real ``speakerdb serve`` processes for the service tests and the load benchmark.

A server is started with ``--port 0`` and found by the line it prints once the model is
loaded and the index warm (``speakerdb serve: ready on URL``): nothing waits on the clock.
A deadline only turns a server that never gets ready into a failure.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

READY = re.compile(r"speakerdb serve: ready on (\S+)")
STARTUP_DEADLINE_S = 600  # only a hung server takes this long to load a model


class ServerFailed(RuntimeError):
    pass


class Server:
    """``speakerdb serve --db URL --port 0 ...`` in a child process, ready when built."""

    def __init__(
        self,
        db_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        command = [
            python,
            "-m",
            "speakerdb",
            "serve",
            "--db",
            db_url,
            "--port",
            "0",
            "--no-access-log",
            "--log-level",
            "warning",
            *args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else os.environ.copy(),
        )
        self.stderr: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(
            target=_pump, args=(self.process.stdout, lines.put, True), daemon=True
        ).start()
        threading.Thread(
            target=_pump, args=(self.process.stderr, self.stderr.append), daemon=True
        ).start()
        self.url = self._await_ready(lines)

    def _await_ready(self, lines: queue.Queue[str | None]) -> str:
        while True:
            try:
                line = lines.get(timeout=STARTUP_DEADLINE_S)
            except queue.Empty:
                self.kill()
                raise ServerFailed(f"not ready within {STARTUP_DEADLINE_S} s") from None
            if line is None:
                self.process.wait()
                raise ServerFailed(
                    f"the server exited ({self.process.returncode}): {''.join(self.stderr)}"
                )
            found = READY.search(line)
            if found:
                return found.group(1)

    @property
    def address(self) -> tuple[str, int]:
        parsed = urllib.parse.urlsplit(self.url)
        assert parsed.hostname is not None and parsed.port is not None
        return parsed.hostname, parsed.port

    def client(self, key: str | None = None, timeout: float = 300.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pump(stream: Iterable[str] | None, put: Any, end: bool = False) -> None:
    """Hand every line of ``stream`` to ``put`` (and None at its end when ``end``)."""
    if stream is not None:
        for line in stream:
            put(line)
    if end:
        put(None)


def upload(paths: Sequence[Path], field: str = "audio") -> list[tuple[str, tuple[str, bytes]]]:
    """httpx ``files=`` for these recordings, under their own names."""
    return [(field, (p.name, p.read_bytes())) for p in paths]


def multipart(files: list[tuple[str, tuple[str, bytes]]], data: dict[str, str] | None = None):
    """(body bytes, content type) of a multipart form, as httpx would send it."""
    request = httpx.Request("POST", "http://x/", files=files, data=data or {})
    return request.read(), request.headers["content-type"]


def raw_request(
    address: tuple[str, int], path: str, body: bytes, content_type: str, key: str | None, sent: int
) -> socket.socket:
    """Open a connection and send a POST's headers and the first ``sent`` bytes of its body
    (declaring all of it): an upload the test controls byte by byte."""
    host, port = address
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    connection = socket.create_connection((host, port), timeout=300)
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:sent])
    return connection


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """Status and body of the answer on a connection opened by :func:`raw_request`."""
    data = b""
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body
