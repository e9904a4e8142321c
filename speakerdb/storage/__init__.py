"""Storage layer: SQL schema and engines, migrations, the FAISS vector index and its cache
file, the store that keeps both in step. Never imports torch. Private modules; the names
below are this layer's public ones (the library's are exported by :mod:`speakerdb`), loaded
on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb._lazy import load_lazily

if TYPE_CHECKING:
    from speakerdb.storage._keys import SCOPES, ApiKeyRecord, NewApiKey
    from speakerdb.storage._migrate import UpgradeResult, upgrade_database

__all__ = [
    "SCOPES",
    "ApiKeyRecord",
    "NewApiKey",
    "UpgradeResult",
    "upgrade_database",
]

_LAZY = {
    "ApiKeyRecord": "speakerdb.storage._keys",
    "NewApiKey": "speakerdb.storage._keys",
    "SCOPES": "speakerdb.storage._keys",
    "UpgradeResult": "speakerdb.storage._migrate",
    "upgrade_database": "speakerdb.storage._migrate",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
