"""Reading the lists users give us: NeMo manifests and trial / pair lists.

Relative paths resolve against the folder of the list file, so a manifest and its audio can
be moved together. Every malformed line is a UsageError naming the file and line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from speakerdb.errors import UsageError

__all__ = ["ManifestEntry", "Trial", "read_manifest", "read_pairs", "read_trials"]


@dataclass(frozen=True)
class ManifestEntry:
    path: Path
    speaker: str
    line: int


@dataclass(frozen=True)
class Trial:
    """A pair of recordings; ``label`` is 1 (same speaker), 0 (different) or None (unknown)."""

    a: Path
    b: Path
    label: int | None
    line: int


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """NeMo manifest: one JSON object per line with ``audio_filepath`` and ``label`` (or
    ``speaker``). Blank lines are ignored."""
    path = Path(path)
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    for number, line in enumerate(_read_lines(path, "manifest"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{where}: not a JSON object ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a JSON object")
        audio = item.get("audio_filepath")
        speaker = item.get("label", item.get("speaker"))
        if not isinstance(audio, str) or not audio:
            raise UsageError(f'{where}: missing "audio_filepath"')
        if speaker is None or (isinstance(speaker, str) and not speaker.strip()):
            raise UsageError(f'{where}: missing "label" (or "speaker")')
        if not isinstance(speaker, str | int):
            raise UsageError(f'{where}: "label" must be text')
        entries.append(ManifestEntry(_resolve(base, audio), str(speaker), number))
    if not entries:
        raise UsageError(f"manifest {path} has no entries")
    return entries


def read_trials(path: str | Path, require_labels: bool = False) -> list[Trial]:
    """Trial lines ``<1|0> <path_a> <path_b>`` (VoxCeleb) or ``<path_a> <path_b>``.

    Paths are whitespace-free (as in VoxCeleb lists), relative to the list's folder or
    absolute. ``require_labels``: every line must carry its 1/0 label.
    """
    path = Path(path)
    base = path.resolve().parent
    trials: list[Trial] = []
    for number, line in enumerate(_read_lines(path, "trial list"), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{number}"
        if len(fields) == 3:
            if fields[0] not in ("0", "1"):
                raise UsageError(
                    f"{where}: the label must be 1 (same speaker) or 0, not {fields[0]!r}"
                )
            label: int | None = int(fields[0])
            a, b = fields[1:]
        elif len(fields) == 2:
            if require_labels:
                raise UsageError(f"{where}: expected '<1|0> <path_a> <path_b>'")
            label = None
            a, b = fields
        else:
            raise UsageError(
                f"{where}: expected '[<1|0>] <path_a> <path_b>', got {len(fields)} fields"
            )
        trials.append(Trial(_resolve(base, a), _resolve(base, b), label, number))
    if not trials:
        raise UsageError(f"trial list {path} has no trials")
    return trials


def read_pairs(path: str | Path) -> list[Trial]:
    """Pairs to compare: ``path_a path_b`` lines, or labelled VoxCeleb lines."""
    return read_trials(path, require_labels=False)
