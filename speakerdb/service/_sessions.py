"""``GET /v1/sessions`` upgraded to a WebSocket: a live session (see docs/live.md).

Before the upgrade is accepted, the same checks as the HTTP routes: the Host header, where a
browser says the connection comes from, the key and its scope (``speaker=NAME`` needs
verify, ``mode=identify`` identify), and the server-wide session cap
(:mod:`speakerdb.service._slots`). A refusal is an HTTP answer (400 / 401 / 403 / 429 at the
cap, 503 when the slots cannot be used, with the usual JSON error) where the server can
send one, else a close before the handshake completes.

Then: one JSON text frame ``{"sample_rate", "encoding", "channels"}``, binary frames of raw
PCM, and a text frame ``{"type": "end"}`` for the end of the audio. The server sends one
JSON text frame per event and, at the end, the summary, then closes: 1000 normally, 1003
for bad data (the error event says what), 1008 for a policy refusal or a limit of time,
1009 for a session past its byte limit, 1011 for a server fault. Embedding runs in worker
threads, never on the event loop; a session's failure is its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from speakerdb import acting_as
from speakerdb.errors import SessionLimitError, SpeakerDBError, UsageError
from speakerdb.live import ErrorEvent, LiveSession, PcmDecoder, SessionLimits
from speakerdb.service._errors import ServiceError, error_body, error_response, status_for
from speakerdb.service._guard import NO_KEY_ACTOR
from speakerdb.service._origin import bad_host, cross_origin
from speakerdb.service._slots import SessionSlot
from speakerdb.service._state import ServiceState

__all__ = ["CLOSE_BAD_DATA", "CLOSE_POLICY", "CLOSE_TOO_BIG", "CLOSE_TRY_LATER", "router"]

log = logging.getLogger("speakerdb.service")

CLOSE_NORMAL, CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1003, 1008, 1009
CLOSE_SERVER_ERROR, CLOSE_TRY_LATER = 1011, 1013
_MAX_TEXT_FRAME = 4096  # the opening and closing messages are a few dozen bytes

router = APIRouter()


class _Closing(Exception):
    """End the session: send ``event`` (if any) and the summary, close with ``code``."""

    def __init__(self, code: int, event: ErrorEvent | None = None) -> None:
        self.code = code
        self.event = event


_ACTOR = "speakerdb.audit_actor"  # the key's name, set on the scope once it is admitted
_KEY = "speakerdb.session_key"  # the admitted key (absent: no key needed)


@router.websocket("/v1/sessions")
async def sessions(websocket: WebSocket) -> None:
    state: ServiceState = websocket.app.state.service
    admitted = await _admit(websocket, state)
    if not isinstance(admitted, SessionSlot):
        await _refuse(websocket, *admitted)
        return
    # The audit log's actor for the session's lookups (the worker threads inherit it).
    actor = websocket.scope.get(_ACTOR, NO_KEY_ACTOR)
    # No await between the slot's acquisition and this block: it is always given back.
    with admitted, acting_as(actor):
        await websocket.accept()
        await _run(websocket, state, admitted)


async def _admit(
    websocket: WebSocket, state: ServiceState
) -> SessionSlot | tuple[int, int, str, str]:
    """The session's slot once every check passed, else (HTTP status, close code, error
    code, message) of the refusal."""
    settings, headers = state.settings, websocket.scope.get("headers", ())
    why = bad_host(headers, settings)
    if why is not None:
        return 400, CLOSE_POLICY, "bad_host", why
    # A WebSocket is never a "safe" request: a page elsewhere must not open one.
    why = cross_origin("POST", headers, settings)
    if why is not None:
        message = f"{why} is refused: this server acts only on its own pages and programs"
        return 403, CLOSE_POLICY, "cross_origin", message
    speaker = websocket.query_params.get("speaker")
    mode = websocket.query_params.get("mode", "identify" if speaker is None else "verify")
    if mode not in ("verify", "identify") or (mode == "verify") != (speaker is not None):
        return 400, CLOSE_POLICY, "usage", "give speaker=NAME (verify) or mode=identify"
    try:
        key = await anyio.to_thread.run_sync(state.authorize, _bearer(websocket), (mode,))
    except ServiceError as exc:
        return exc.status, CLOSE_POLICY, exc.code, exc.message
    except SpeakerDBError as exc:
        return status_for(exc), CLOSE_POLICY, exc.code, exc.message
    try:
        slot = state.session_slots.acquire()
    except OSError:
        log.exception("live sessions: the session slots cannot be used")
        return 503, CLOSE_TRY_LATER, "busy", "the server cannot take a live session now"
    if slot is None:
        message = f"this server runs at most {settings.max_sessions} live sessions at once"
        return 429, CLOSE_TRY_LATER, "busy", message
    if key is not None:
        websocket.scope[_ACTOR] = key.name
        websocket.scope[_KEY] = key
    return slot


async def _refuse(websocket: WebSocket, status: int, close: int, code: str, message: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(status, error_body(code, message)))
        return
    await websocket.accept()
    await _send(websocket, {"type": "error", "time": 0.0, "error": code, "message": message})
    await websocket.close(close, message[:120])


def _bearer(websocket: WebSocket) -> str | None:
    scheme, _, credentials = websocket.headers.get("authorization", "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


async def _run(websocket: WebSocket, state: ServiceState, slot: SessionSlot) -> None:
    settings = state.settings
    session: LiveSession | None = None
    code = CLOSE_NORMAL
    try:
        decoder = _opening(await _receive(websocket, settings.session_idle_s, None))
        limits = SessionLimits(
            max_seconds=settings.session_max_seconds, max_bytes=settings.session_max_bytes
        )
        speaker = websocket.query_params.get("speaker")
        # The key's tenant only, like every route.
        db = state.tenant_db(websocket.scope.get(_KEY))
        session = await anyio.to_thread.run_sync(lambda: db.session(speaker=speaker, limits=limits))
        while True:
            message = await _receive(websocket, settings.session_idle_s, session)
            if message.get("bytes") is None:
                _closing_text(message.get("text"), session)
                break
            events = await _feed(session, decoder, message["bytes"])
            for event in events:
                await _send(websocket, event.to_dict())
            fatal = next((e for e in events if isinstance(e, ErrorEvent) and e.fatal), None)
            if fatal is not None:
                code = CLOSE_TOO_BIG if session.ended_by == "bytes" else CLOSE_POLICY
                break
    except WebSocketDisconnect:
        return  # the caller hung up: nobody to tell, nothing to decide
    except _Closing as closing:
        code = closing.code
        if closing.event is not None:
            await _send(websocket, closing.event.to_dict())
    except SpeakerDBError as exc:  # opening the session (an unknown speaker, the database)
        event = ErrorEvent(0.0, exc.code, state.error_body(exc)["message"], fatal=True)
        await _send(websocket, event.to_dict())
        code = CLOSE_POLICY if status_for(exc) < 500 else CLOSE_SERVER_ERROR
    except Exception:
        log.exception("internal error in a live session")
        code = CLOSE_SERVER_ERROR
    if session is not None:
        summary = await anyio.to_thread.run_sync(session.close)
        await _send(websocket, summary.to_dict())
    # Free before the close frame: a client that saw its session end may start the next.
    slot.release()
    await websocket.close(code)


def _opening(message: dict[str, Any]) -> PcmDecoder:
    """The first frame: JSON text {"sample_rate", "encoding", "channels"}."""
    text = message.get("text")
    try:
        if text is None or len(text) > _MAX_TEXT_FRAME:
            raise ValueError
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError
        return PcmDecoder(
            str(spec.get("encoding", "pcm_s16le")),
            spec.get("sample_rate"),  # type: ignore[arg-type]  # PcmDecoder checks it
            spec.get("channels", 1),
        )
    except ValueError:
        why = 'the first frame must be JSON text: {"sample_rate": 8000, "encoding": "pcm_s16le"}'
    except SpeakerDBError as exc:
        why = exc.message
    raise _Closing(CLOSE_BAD_DATA, ErrorEvent(0.0, "bad_data", why, fatal=True))


def _closing_text(text: str | None, session: LiveSession) -> None:
    try:
        if (
            text is not None
            and len(text) <= _MAX_TEXT_FRAME
            and json.loads(text) == {"type": "end"}
        ):
            return
    except ValueError:
        pass
    why = 'after the opening frame: binary audio frames, then {"type": "end"}'
    raise _Closing(CLOSE_BAD_DATA, ErrorEvent(session.time, "bad_data", why, fatal=True))


async def _feed(session: LiveSession, decoder: PcmDecoder, data: bytes) -> list[Any]:
    try:
        chunk = decoder.decode(data)
        events: list[Any] = await anyio.to_thread.run_sync(session.feed, chunk, decoder.sample_rate)
        return events
    except SessionLimitError as exc:
        raise _Closing(
            CLOSE_POLICY, ErrorEvent(session.time, exc.code, exc.message, True)
        ) from None
    except (UsageError, SpeakerDBError) as exc:
        event = ErrorEvent(session.time, exc.code, exc.message, fatal=True)
        raise _Closing(CLOSE_BAD_DATA, event) from None


async def _receive(
    websocket: WebSocket, idle_s: float, session: LiveSession | None
) -> dict[str, Any]:
    try:
        message = dict(await asyncio.wait_for(websocket.receive(), idle_s))
    except TimeoutError:
        at = session.time if session is not None else 0.0
        why = f"no audio for {idle_s:g} s"
        raise _Closing(CLOSE_POLICY, ErrorEvent(at, "limit", why, fatal=True)) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def _send(websocket: WebSocket, document: dict[str, Any]) -> None:
    """One JSON text frame; a client that stops reading is cut off after the idle time."""
    state: ServiceState = websocket.app.state.service
    try:
        await asyncio.wait_for(
            websocket.send_text(json.dumps(document)), state.settings.session_idle_s
        )
    except TimeoutError:
        raise WebSocketDisconnect(CLOSE_POLICY) from None
