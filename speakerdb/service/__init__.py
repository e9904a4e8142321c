"""``speakerdb serve``: the HTTP service (FastAPI on uvicorn; ``pip install 'speakerdb[serve]'``).

    from speakerdb.service import ServiceSettings, create_app
    app = create_app(ServiceSettings(db_url="postgresql+psycopg://...", auth="required"))

Routes call the SpeakerDB facade and nothing deeper; see :mod:`speakerdb.service._routes`.
The names below load on first use: the CLI's ``--server`` client needs neither FastAPI nor
the library's heavy modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speakerdb.service._app import app_from_environment, create_app, expire_periodically
    from speakerdb.service._client import ServiceClient
    from speakerdb.service._metrics import MULTIPROCESS_ENV
    from speakerdb.service._protocol import DeadlineH11Protocol
    from speakerdb.service._settings import SETTINGS_ENV, ServiceSettings, is_loopback
    from speakerdb.service._slots import SESSION_SLOTS_ENV

__all__ = [
    "MULTIPROCESS_ENV",
    "SESSION_SLOTS_ENV",
    "SETTINGS_ENV",
    "DeadlineH11Protocol",
    "ServiceClient",
    "ServiceSettings",
    "app_from_environment",
    "create_app",
    "expire_periodically",
    "is_loopback",
]

_LAZY = {
    "app_from_environment": "speakerdb.service._app",
    "create_app": "speakerdb.service._app",
    "expire_periodically": "speakerdb.service._app",
    "ServiceClient": "speakerdb.service._client",
    "MULTIPROCESS_ENV": "speakerdb.service._metrics",
    "DeadlineH11Protocol": "speakerdb.service._protocol",
    "SESSION_SLOTS_ENV": "speakerdb.service._slots",
    "SETTINGS_ENV": "speakerdb.service._settings",
    "ServiceSettings": "speakerdb.service._settings",
    "is_loopback": "speakerdb.service._settings",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
