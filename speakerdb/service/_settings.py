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
