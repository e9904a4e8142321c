"""What a server is told: its database and model, its limits, how it authenticates."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from speakerdb.errors import ConfigurationError

__all__ = ["SETTINGS_ENV", "ServiceSettings", "is_loopback"]

SETTINGS_ENV = "SPEAKERDB_SERVE_SETTINGS"
"""How ``speakerdb serve --workers N`` hands the settings to its worker processes (JSON)."""

AuthMode = Literal["required", "auto"]


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of one server.

    db_url: the database (None: the default one). model / device: the embedding model.
    auth: "required" -- every /v1 request needs a valid key; "auto" -- the same once any key
    exists in the database, but open while none does (``speakerdb serve`` allows "auto"
    only on a loopback address). max_request_bytes: largest request body (413 beyond).
    max_files: most recordings in one request. max_seconds: longest recording (413, code
    too_long). request_timeout_s: longest time to receive a request body (408) and to wait
    for its recordings to be embedded (503, code busy). batch_wait_s / batch_files: the
    micro-batcher (see :mod:`speakerdb.service._batcher`); batch_parallel: batches embedded
    at once (two keep both cores of a small machine busy: one batch decodes while the
    other encodes). upload_dir: where uploads are written while a request runs (None:
    /dev/shm where there is one, else the system's temporary folder). public_url: how the
    server is reached, printed when it is ready.

    host / port: the address the server listens on (None: not known, e.g. an app mounted
    by other code). On a loopback address, requests must name the server by a loopback
    name or address with this port in their Host header (a web page whose name was
    rebound to 127.0.0.1 names its own host there); allowed_hosts: further names accepted
    in Host (any port), e.g. the name a reverse proxy forwards; on another address they
    are, when given, the only names accepted besides loopback ones.

    Live sessions (``/v1/sessions``, a WebSocket): max_sessions at once over the
    whole server, every worker process together (more are refused with 429 / close 1013;
    :mod:`speakerdb.service._slots`); session_idle_s: longest wait for a
    frame from the client, or for it to take one (close 1008); session_max_seconds /
    session_max_bytes: audio one session may send (close 1008 / 1009).

    Retention: every expire_every_s seconds (and once at start, before the server is ready)
    the voiceprints whose retention ended are erased in every tenant, as ``speakerdb db
    expire --all-tenants`` does; 0 never.
    """

    db_url: str | None = None
    model: str | None = None
    device: str | None = None
    auth: AuthMode = "required"
    max_request_bytes: int = 50 * 1024 * 1024
    max_files: int = 20
    max_seconds: float = 120.0
    request_timeout_s: float = 60.0
    batch_wait_s: float = 0.01
    batch_files: int = 64
    batch_parallel: int = 2
    upload_dir: str | None = None
    public_url: str | None = None
    host: str | None = None
    port: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_sessions: int = 32
    session_idle_s: float = 30.0
    session_max_seconds: float = 3600.0
    session_max_bytes: int = 256 * 1024 * 1024
    expire_every_s: float = 3600.0

    def __post_init__(self) -> None:
        # JSON (the workers' copy) has lists; names compare without case.
        names = tuple(str(n).strip().lower().strip("[]") for n in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", names)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServiceSettings:
        try:
            values: dict[str, Any] = json.loads(text)
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid service settings: {exc}") from None

    @classmethod
    def from_environment(cls) -> ServiceSettings:
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise ConfigurationError(f"{SETTINGS_ENV} is not set (run `speakerdb serve`)")
        return cls.from_json(text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
