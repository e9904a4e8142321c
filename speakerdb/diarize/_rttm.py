"""RTTM, the NIST rich transcription time-marked format diarization tools exchange.

One line per turn::

    SPEAKER <file-id> <channel> <onset s> <duration s> <NA> <NA> <speaker> <NA> <NA>

Only ``SPEAKER`` lines are read; other line types, blank lines and ``;;`` comments are
skipped. File ids and speaker labels may not contain whitespace (RTTM is split on it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speakerdb._private_files import write_private
from speakerdb.errors import UsageError, printable

__all__ = ["RttmTurn", "format_rttm", "parse_rttm", "read_rttm", "rttm_label", "write_rttm"]


@dataclass(frozen=True)
class RttmTurn:
    """One SPEAKER line: ``file_id``, ``start`` and ``duration`` in seconds, ``speaker``."""

    file_id: str
    start: float
    duration: float
    speaker: str
    channel: str = "1"

    @property
    def end(self) -> float:
        return self.start + self.duration


_WHITESPACE = re.compile(r"\s+")


def rttm_label(text: str) -> str:
    """``text`` usable as an RTTM field: whitespace runs become ``_`` (never empty)."""
    cleaned = _WHITESPACE.sub("_", text.strip())
    return cleaned or "_"


def format_rttm(turns: Iterable[RttmTurn]) -> str:
    """RTTM text (3 decimals, one line per turn, each ending in a newline)."""
    lines = []
    for t in turns:
        lines.append(
            f"SPEAKER {rttm_label(t.file_id)} {t.channel} {t.start:.3f} {t.duration:.3f} "
            f"<NA> <NA> {rttm_label(t.speaker)} <NA> <NA>\n"
        )
    return "".join(lines)


def write_rttm(path: str | os.PathLike[str], turns: Iterable[RttmTurn]) -> None:
    """Write ``turns`` to ``path``: who spoke when is biometric data, so the file is mode
    0600, replaced atomically (see :func:`speakerdb._private_files.write_private`).
    Raises UsageError when it cannot be written."""
    write_private(path, format_rttm(turns))


def parse_rttm(text: str, source: str = "<rttm>") -> list[RttmTurn]:
    """SPEAKER turns of RTTM ``text``, in file order. Raises UsageError naming the line for
    a malformed SPEAKER line (too few fields, non-numeric or negative times)."""
    out: list[RttmTurn] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise UsageError(f"{printable(source)}:{number}: a SPEAKER line needs 8 or more fields")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise UsageError(
                f"{printable(source)}:{number}: onset and duration must be numbers"
            ) from None
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
            raise UsageError(
                f"{printable(source)}:{number}: onset and duration must be finite and >= 0"
            )
        out.append(RttmTurn(fields[1], start, duration, fields[7], fields[2]))
    return out


def read_rttm(path: str | os.PathLike[str]) -> list[RttmTurn]:
    """:func:`parse_rttm` of a file. Raises UsageError when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read RTTM {printable(path)}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read RTTM {printable(path)}: not UTF-8 text") from None
    return parse_rttm(text, os.fspath(path))
