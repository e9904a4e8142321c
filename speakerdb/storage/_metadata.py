"""Speaker metadata: what may be stored, and how stored metadata is read back.

Stored metadata is a JSON object: string keys, and values that are strings, finite numbers,
booleans, null, lists and objects, nested at most :data:`MAX_DEPTH` levels and at most
:data:`MAX_BYTES` as UTF-8 JSON. Every string must be text UTF-8 can carry: a lone
surrogate (``"\\ud800"``, or what Python makes of undecodable bytes in a command-line
argument) is refused, since no client could print or send it back. Everything is checked
without recursion, so hostile input (50 000 levels of nesting) costs bounded work and
changes nothing.

Reading is forgiving where writing is strict: metadata stored by an earlier release that
did not check it (a lone surrogate, extreme nesting, text that is not JSON) is not
returned; the speaker is listed with ``metadata`` None and ``metadata_error`` saying why,
so one bad row never breaks a listing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from speakerdb.errors import UsageError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "read_stored_metadata", "validated_metadata"]

MAX_DEPTH = 32
"""Levels of nesting metadata may have (the object itself is level 1)."""
MAX_BYTES = 64 * 1024
"""The most UTF-8 JSON bytes metadata may take."""
READ_MAX_DEPTH = 128
"""Nesting beyond which stored metadata is not returned (deep enough for anything an
earlier release accepted and a client can serialise; JSON encoders recurse)."""


def validated_metadata(value: object) -> dict[str, Any] | None:
    """``value`` if it may be stored as a speaker's metadata (None: none). Raises
    UsageError saying what is wrong (not an object, not JSON, a lone surrogate, too deep,
    too large)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError("speaker metadata must be a JSON object (a dict)")
    problem = _problem(value, MAX_DEPTH, MAX_BYTES)
    if problem is not None:
        raise UsageError(f"speaker metadata {problem}")
    return value


def read_stored_metadata(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, None) for metadata as stored (JSON text, or None), or (None, why) when
    it cannot be returned to a client."""
    if text is None:
        return None, None
    try:
        value = json.loads(text)
    except RecursionError:
        return None, "stored metadata is nested too deeply to be read"
    except ValueError:
        return None, "stored metadata is not valid JSON"
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "stored metadata is not a JSON object"
    problem = _problem(value, READ_MAX_DEPTH, None)
    return (value, None) if problem is None else (None, f"stored metadata {problem}")


def _problem(root: dict[str, Any], max_depth: int, max_bytes: int | None) -> str | None:
    """Why ``root`` is not storable metadata, or None. Iterative: the work is bounded by
    the depth limit and (when given) the size limit, whatever the input."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if max_bytes is not None and nodes > max_bytes:  # every value takes a byte or more
            return f"is larger than {max_bytes} bytes as JSON"
        if isinstance(value, dict):
            if depth > max_depth:
                return f"is nested deeper than {max_depth} levels"
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"has a key that is not a string ({type(key).__name__})"
                if not _encodable(key):
                    return "has a key that is not valid Unicode text (a lone surrogate)"
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            if depth > max_depth:
                return f"is nested deeper than {max_depth} levels"
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if not _encodable(value):
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"holds a number JSON cannot carry ({value})"
        elif value is not None and not isinstance(value, bool | int):
            return f"holds a value that is not JSON ({type(value).__name__})"
    try:
        encoded = json.dumps(root, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # e.g. an integer of more than 4300 digits
        return f"is not JSON-serialisable: {exc}"
    if max_bytes is not None and len(encoded) > max_bytes:
        return f"takes {len(encoded)} bytes as JSON, more than {max_bytes}"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
