"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on what the application does not
read itself: a request's headers, and the rest of a body nobody wants.

uvicorn closes a connection that stays silent after an answer (keep-alive timeout), but
one that sends a header line every few seconds, or that opens and says nothing, stays open
as long as it likes: a few hundred of them hold every connection a server has. Here every
connection must deliver a request's headers within ``receive_timeout_s`` of the moment it
is expected (the connection opened, or the previous answer was sent), else it is closed.
Once the headers are in, the application's guard holds the body to the same limit (408)
while it reads it; after the answer, an unread remainder of the body (a request refused
before its body was read) is again held to the deadline here.

Used by ``speakerdb serve`` as uvicorn's ``http`` protocol:
``functools.partial(DeadlineH11Protocol, receive_timeout_s=60)`` in one process; with
``--workers N``, by its import name, the workers reading the deadline from the settings
they are handed (an object to unpickle would import speakerdb before a worker answers its
supervisor's first health check, which a loaded machine then misses).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DeadlineH11Protocol"]


class DeadlineH11Protocol(H11Protocol):
    """H11Protocol closing a connection whose request headers (or the unread rest of a
    body, after the answer) do not arrive within ``receive_timeout_s`` seconds."""

    def __init__(self, *args: Any, receive_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if receive_timeout_s is None:
            from speakerdb.service._settings import ServiceSettings

            receive_timeout_s = ServiceSettings.from_environment().request_timeout_s
        self.receive_timeout_s = receive_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.receive_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before and self.cycle is not None:
            # A request's headers are complete: the application answers it, and its guard
            # holds the body to the deadline while it reads it.
            self._disarm()

    def on_response_complete(self) -> None:
        # Armed before uvicorn looks for a pipelined next request (which disarms it).
        self._arm()
        super().on_response_complete()
