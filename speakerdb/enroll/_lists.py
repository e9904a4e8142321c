"""Reading the lists users give us: NeMo manifests and trial / pair lists.

Relative paths resolve against the folder of the list file, so a manifest and its audio can
be moved together. Every malformed line is a UsageError naming the file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from speakerdb.errors import UsageError

__all__ = [
    "ManifestEntry",
    "Trial",
    "TrialCounts",
    "count_trials",
    "distinct_trials",
    "read_manifest",
    "read_pairs",
    "read_trials",
]


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One manifest line. consent / expires_after: the line's ``"consent"`` text and
    ``"expires_after"`` period ("3y", "90d" ...), for its speaker (None: not given)."""

    path: Path
    speaker: str
    line: int
    consent: str | None = None
    expires_after: str | None = None


@dataclass(frozen=True, slots=True)
class Trial:
    """A pair of recordings; ``label`` is 1 (same speaker), 0 (different) or None (unknown)."""

    a: Path
    b: Path
    label: int | None
    line: int


def _read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, read as it goes (a list of a million lines is
    never held whole)."""
    try:
        with open(path, encoding="utf-8") as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


class _Paths:
    """Resolves the paths of one list, one Path object per distinct spelling: a file named
    on many lines costs one object."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._known: dict[str, Path] = {}

    def __call__(self, value: str) -> Path:
        path = self._known.get(value)
        if path is None:
            path = self._known[value] = _resolve(self._base, value)
        return path


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """NeMo manifest: one JSON object per line with ``audio_filepath`` and ``label`` (or
    ``speaker``), optionally ``consent`` (text) and ``expires_after`` (a retention period:
    "3y", "90d", "2w", "12h"), which apply to the line's speaker: the lines of one speaker
    that give them must agree. Blank lines are ignored. Raises UsageError naming the line."""
    path = Path(path)
    resolve = _Paths(path.resolve().parent)
    entries: list[ManifestEntry] = []
    governed: dict[str, dict[str, tuple[str, int]]] = {}
    for number, line in _read_lines(path, "manifest"):
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
        consent, expires = _governance(item, where)
        for key, value in (("consent", consent), ("expires_after", expires)):
            if value is None:
                continue
            seen = governed.setdefault(str(speaker), {}).setdefault(key, (value, number))
            if seen[0] != value:
                raise UsageError(
                    f'{where}: "{key}" differs from line {seen[1]} for speaker {str(speaker)!r}'
                )
        entries.append(ManifestEntry(resolve(audio), str(speaker), number, consent, expires))
    if not entries:
        raise UsageError(f"manifest {path} has no entries")
    return entries


def _governance(item: dict[str, Any], where: str) -> tuple[str | None, str | None]:
    """A manifest line's consent text and retention period, checked."""
    from speakerdb.storage._governance import check_consent_text, parse_duration

    consent, expires = item.get("consent"), item.get("expires_after")
    try:
        if consent is not None and not isinstance(consent, str):
            raise UsageError('"consent" must be text')
        if expires is not None:
            if not isinstance(expires, str):
                raise UsageError('"expires_after" must be a period such as "3y" or "90d"')
            parse_duration(expires)
        return check_consent_text(consent), expires
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def read_trials(path: str | Path, require_labels: bool = False) -> list[Trial]:
    """Trial lines ``<1|0> <path_a> <path_b>`` (VoxCeleb) or ``<path_a> <path_b>``.

    Paths are whitespace-free (as in VoxCeleb lists), relative to the list's folder or
    absolute. ``require_labels``: every line must carry its 1/0 label.
    """
    path = Path(path)
    resolve = _Paths(path.resolve().parent)
    trials: list[Trial] = []
    for number, line in _read_lines(path, "trial list"):
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
        trials.append(Trial(resolve(a), resolve(b), label, number))
    if not trials:
        raise UsageError(f"trial list {path} has no trials")
    return trials


def read_pairs(path: str | Path) -> list[Trial]:
    """Pairs to compare: ``path_a path_b`` lines, or labelled VoxCeleb lines."""
    return read_trials(path, require_labels=False)


# --- counting trials once ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrialCounts:
    """What a list of labelled trials holds, each thing counted once.

    lines: trials given; trials: distinct ones (a pair and its mirror are one trial);
    target_trials / nontarget_trials: distinct same- / different-speaker trials; recordings:
    distinct files; speakers: groups of recordings joined by same-speaker trials (the
    speakers of the same-speaker trials; exactly the speakers for a manifest's pairs);
    duplicates: lines that repeat a trial (or its mirror); self_pairs: lines pairing a file
    with itself (not a trial: ignored)."""

    lines: int
    trials: int
    target_trials: int
    nontarget_trials: int
    recordings: int
    speakers: int
    duplicates: int = 0
    self_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ignored(self) -> str:
        """What was left out, for a user ("" when nothing was)."""
        parts = []
        if self.duplicates:
            parts.append(f"{self.duplicates} repeated trial line(s) counted once")
        if self.self_pairs:
            parts.append(f"{self.self_pairs} line(s) pairing a file with itself ignored")
        return "; ".join(parts)


def distinct_trials(trials: Iterable[Trial]) -> tuple[list[Trial], TrialCounts]:
    """The distinct labelled trials, in first-seen order, and their counts.

    A pair and its mirror (``a b`` / ``b a``) are one trial; a line repeating one is counted
    in ``duplicates``; a file paired with itself is dropped. Raises UsageError when two lines
    give one pair different labels."""
    seen: dict[tuple[str, str], Trial] = {}
    lines = self_pairs = 0
    for trial in trials:
        lines += 1
        a, b = str(trial.a), str(trial.b)
        if a == b:
            self_pairs += 1
            continue
        key = (a, b) if a < b else (b, a)
        first = seen.setdefault(key, trial)
        if first.label != trial.label:
            lines_named = f"lines {first.line} and {trial.line}" if trial.line else "two trials"
            raise UsageError(f"{lines_named} give {a} / {b} different labels")
    kept = list(seen.values())
    counts = count_trials(kept)
    extra = {"lines": lines, "duplicates": lines - self_pairs - len(kept), "self_pairs": self_pairs}
    return kept, TrialCounts(**(counts.to_dict() | extra))


def count_trials(trials: Iterable[Trial]) -> TrialCounts:
    """Counts of trials already distinct (see :func:`distinct_trials`)."""
    parent: dict[str, str] = {}  # union-find over recordings joined by same-speaker trials

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    recordings: set[str] = set()
    count = targets = nontargets = 0
    for trial in trials:
        count += 1
        a, b = str(trial.a), str(trial.b)
        recordings.update((a, b))
        if trial.label == 1:
            targets += 1
            parent.setdefault(a, a)
            parent.setdefault(b, b)
            parent[root(a)] = root(b)
        elif trial.label == 0:
            nontargets += 1
    speakers = len({root(x) for x in parent})
    return TrialCounts(count, count, targets, nontargets, len(recordings), speakers)
