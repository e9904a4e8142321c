"""Names a package exports but loads on first use, so that importing the package (``speakerdb
--help``, listing speakers) loads neither torch nor SQLAlchemy until a name needs them."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["load_lazily"]


def load_lazily(namespace: dict[str, Any], table: Mapping[str, str], name: str) -> Any:
    """The package's module ``__getattr__``: ``name`` imported from the module ``table``
    gives for it, then kept in ``namespace`` (the package's globals) so later lookups are
    plain. Raises AttributeError for a name the table does not hold."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
