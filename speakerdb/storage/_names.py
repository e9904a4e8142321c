"""Speaker names: one canonical form, so that names that look the same are the same name.

A name is stored in Unicode NFC with surrounding whitespace removed, and refused when it
holds a character that is not visible text: controls (Cc: C0, DEL, C1 such as U+0085),
format characters (Cf: zero-width space and joiners, bidi controls such as U+202E, the BOM),
line and paragraph separators (Zl, Zp: U+2028, U+2029), private-use (Co), surrogates (Cs,
e.g. undecodable bytes of a command-line argument) and unassigned code points (Cn). Those
would make two names look identical, hide a name's real text, or split one line of output
into several.

Every lookup (verify, show, rename, delete, metadata, enrollment bookkeeping) goes through
:func:`lookup_forms`: the name exactly as given first, then its canonical form. New names are
always canonical, so the canonical form finds them however they are typed ("Jose" + U+0301,
"  bob  "); the exact form still reaches a row an older speakerdb stored un-normalised (see
migration 0003).
"""

from __future__ import annotations

import unicodedata

from speakerdb.errors import UsageError, printable

__all__ = [
    "MAX_NAME_LENGTH",
    "REFUSED_CATEGORIES",
    "canonical_name",
    "lookup_forms",
    "validated_name",
]

MAX_NAME_LENGTH = 255
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def canonical_name(name: str) -> str:
    """NFC, surrounding whitespace removed; no validation (see :func:`validated_name`)."""
    return unicodedata.normalize("NFC", name).strip()


def validated_name(name: object) -> str:
    """The canonical form of a new speaker name. Raises UsageError when it is not text, is
    empty, longer than 255 characters, or holds a refused character (named in the
    message, escaped)."""
    if not isinstance(name, str):
        raise UsageError(f"speaker name must be text, not {type(name).__name__}")
    cleaned = canonical_name(name)
    if not cleaned:
        raise UsageError("speaker name must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise UsageError(f"speaker name is longer than {MAX_NAME_LENGTH} characters")
    refused = sorted({c for c in cleaned if unicodedata.category(c) in REFUSED_CATEGORIES})
    if refused:
        shown = ", ".join(f"U+{ord(c):04X} {printable(c)}" for c in refused[:5])
        raise UsageError(f"speaker name must not contain control or invisible characters ({shown})")
    return cleaned


def lookup_forms(name: object) -> tuple[str, ...]:
    """The forms under which ``name`` may be stored, in order of preference: exactly as
    given, then canonical. Raises UsageError when it is not text."""
    if not isinstance(name, str):
        raise UsageError(f"speaker name must be text, not {type(name).__name__}")
    canonical = canonical_name(name)
    return (name,) if canonical == name else (name, canonical)
