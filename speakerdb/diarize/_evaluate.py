"""Scoring diarization against reference RTTM: DER and naming errors.

DER (missed speech, false alarm, speaker confusion, with a forgiveness collar around
reference boundaries) comes from ``pyannote.metrics``, the field's reference
implementation, imported only here (extra ``diarize``). Naming errors are ours:

- naming error: the share of reference speech whose hypothesis label is an enrolled name
  other than the reference speaker's (a voice named after the wrong person, or an unknown
  voice given a name);
- unknown named: the share of unknown (never enrolled) speakers' speech given an enrolled
  name;
- known unnamed: the share of known speakers' speech not labelled with their own name
  (labelled ``unknown_N``, another name, or missed).

A hypothesis label is a *name* unless it looks like ``unknown_N`` or ``speaker_N``. The
naming measures skip the same collar as DER and count 10 ms frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._rttm import RttmTurn
from speakerdb.errors import MissingDependencyError, UsageError, printable

__all__ = [
    "DiarizationEntry",
    "DiarizationScore",
    "is_name",
    "output_ids",
    "read_diarization_manifest",
    "score_diarization",
    "total_score",
]

_ANONYMOUS = re.compile(r"^(unknown|speaker)_\d+$")
_STEP = 0.01  # seconds per frame of the naming measures


def is_name(label: str) -> bool:
    """Whether a hypothesis label names an enrolled speaker."""
    return _ANONYMOUS.match(label) is None


@dataclass(frozen=True)
class DiarizationEntry:
    """One line of a NeMo diarization manifest: the recording, its reference RTTM (None if
    absent), the number of speakers if given, and the known / unknown speaker lists and
    overlap flag when the manifest has them (speakerdb's conversations do)."""

    audio: Path
    rttm: Path | None
    num_speakers: int | None = None
    known: tuple[str, ...] | None = None
    unknown: tuple[str, ...] | None = None
    overlap: bool | None = None
    line: int | None = None

    @property
    def file_id(self) -> str:
        return self.audio.stem


def output_ids(entries: Sequence[DiarizationEntry]) -> list[str]:
    """A distinct file id per entry, naming its RTTM (``<id>.rttm``; also the file field of
    its lines): the recording's base name, unless another entry's is the same (compared
    without case: some file systems ignore it); then the base name and the first 8 hex
    digits of the sha256 of the recording's resolved path, e.g. ``conv-1a2b3c4d`` -- the
    same on every run over the same files, whatever the order of the manifest. Raises
    UsageError, before anything is written, when one recording is listed twice."""
    seen: dict[Path, DiarizationEntry] = {}
    for entry in entries:
        resolved = entry.audio.resolve()
        if resolved in seen:
            raise UsageError(
                f"{_where(entry)} lists {printable(entry.audio)} again (as "
                f"{_where(seen[resolved])}): each recording may be diarized once per run"
            )
        seen[resolved] = entry
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.file_id.casefold()] = counts.get(entry.file_id.casefold(), 0) + 1
    ids = []
    for entry in entries:
        if counts[entry.file_id.casefold()] == 1:
            ids.append(entry.file_id)
        else:
            digest = hashlib.sha256(os.fsencode(entry.audio.resolve())).hexdigest()[:8]
            ids.append(f"{entry.file_id}-{digest}")
    if len({i.casefold() for i in ids}) != len(ids):
        raise UsageError(
            "the manifest's recordings cannot be given distinct output names (base names "
            "clash even with a digest of their paths): rename some of them"
        )
    return ids


def _where(entry: DiarizationEntry) -> str:
    return f"line {entry.line}" if entry.line is not None else "an entry"


def read_diarization_manifest(path: str | Path) -> list[DiarizationEntry]:
    """Entries of a NeMo diarization manifest (JSON lines with ``audio_filepath`` and
    optionally ``rttm_filepath``, ``num_speakers``, ``offset``, ``duration``; relative
    paths are relative to the manifest's folder). Only whole recordings are diarized: a
    non-zero ``offset`` is refused. Raises UsageError naming the line."""
    manifest = Path(path)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read manifest {printable(manifest)}: {exc}") from None
    base = manifest.parent
    out: list[DiarizationEntry] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{printable(manifest)}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("audio_filepath"), str):
            raise UsageError(f"{where}: needs an audio_filepath")
        if float(item.get("offset") or 0) != 0:
            raise UsageError(f"{where}: offsets are not supported (diarize whole recordings)")
        rttm = item.get("rttm_filepath")
        num = item.get("num_speakers")
        out.append(
            DiarizationEntry(
                audio=base / item["audio_filepath"],
                rttm=base / rttm if isinstance(rttm, str) and rttm else None,
                num_speakers=int(num) if isinstance(num, int) and num > 0 else None,
                known=tuple(item["known"]) if isinstance(item.get("known"), list) else None,
                unknown=(tuple(item["unknown"]) if isinstance(item.get("unknown"), list) else None),
                overlap=item.get("overlap") if isinstance(item.get("overlap"), bool) else None,
                line=number,
            )
        )
    if not out:
        raise UsageError(f"{printable(manifest)} lists no recordings")
    return out


@dataclass(frozen=True)
class DiarizationScore:
    """Error totals of one or more recordings, in seconds of reference speech.

    total: reference speech scored (outside the collar); missed / false_alarm / confusion:
    DER components; wrong_name: reference speech labelled with another enrolled name;
    unknown_speech / unknown_named: unknown speakers' speech, and how much of it got a name;
    known_speech / known_unnamed: the same for known speakers not labelled with their name
    (None when the reference does not say who is known).
    """

    total: float
    missed: float
    false_alarm: float
    confusion: float
    wrong_name: float
    unknown_speech: float = 0.0
    unknown_named: float = 0.0
    known_speech: float = 0.0
    known_unnamed: float = 0.0
    files: int = 1
    per_file: list[dict[str, Any]] = field(default_factory=list)

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / self.total if self.total else 0.0

    @property
    def naming_error(self) -> float:
        return self.wrong_name / self.total if self.total else 0.0

    @property
    def unknown_named_rate(self) -> float | None:
        return self.unknown_named / self.unknown_speech if self.unknown_speech else None

    @property
    def known_unnamed_rate(self) -> float | None:
        return self.known_unnamed / self.known_speech if self.known_speech else None

    def to_dict(self) -> dict[str, Any]:
        t = self.total or 1.0
        return {
            "files": self.files,
            "der": self.der,
            "missed": self.missed / t,
            "false_alarm": self.false_alarm / t,
            "confusion": self.confusion / t,
            "naming_error": self.naming_error,
            "unknown_named": self.unknown_named_rate,
            "known_unnamed": self.known_unnamed_rate,
            "reference_seconds": round(self.total, 3),
        }


def score_diarization(
    reference: Sequence[RttmTurn],
    hypothesis: Sequence[RttmTurn],
    *,
    collar: float = 0.25,
    known: Iterable[str] | None = None,
    duration: float | None = None,
) -> DiarizationScore:
    """Score one recording's hypothesis turns against its reference turns.

    collar: seconds forgiven on each side of every reference boundary (0.25 is the usual
    value). known: the reference speakers that are enrolled (None: every reference
    speaker whose label the hypothesis could name is assumed known). duration: the
    recording's length (s), to bound the scored timeline.
    Raises MissingDependencyError without pyannote.metrics, UsageError for a negative collar.
    """
    if collar < 0:
        raise UsageError(f"the collar must be >= 0 seconds, not {collar}")
    metric = _der_metric(collar)
    from pyannote.core import Annotation, Segment, Timeline

    ref, hyp = Annotation(), Annotation()
    for i, t in enumerate(reference):
        ref[Segment(t.start, t.end), f"r{i}"] = t.speaker
    for i, t in enumerate(hypothesis):
        hyp[Segment(t.start, t.end), f"h{i}"] = t.speaker
    end = max([t.end for t in reference] + [t.end for t in hypothesis] + [duration or 0.0])
    # The scored extent: the whole recording when its length is known.
    uem = Timeline([Segment(0.0, max(end, 1e-3))])
    detail = metric(ref, hyp, uem=uem, detailed=True)
    naming = _naming(reference, hypothesis, collar, known, duration)
    return DiarizationScore(
        total=float(detail["total"]),
        missed=float(detail["missed detection"]),
        false_alarm=float(detail["false alarm"]),
        confusion=float(detail["confusion"]),
        wrong_name=naming["wrong_name"],
        unknown_speech=naming["unknown_speech"],
        unknown_named=naming["unknown_named"],
        known_speech=naming["known_speech"],
        known_unnamed=naming["known_unnamed"],
    )


def total_score(scores: Sequence[DiarizationScore]) -> DiarizationScore:
    """The sum of several recordings' scores (rates are then speech-weighted)."""
    return DiarizationScore(
        total=sum(s.total for s in scores),
        missed=sum(s.missed for s in scores),
        false_alarm=sum(s.false_alarm for s in scores),
        confusion=sum(s.confusion for s in scores),
        wrong_name=sum(s.wrong_name for s in scores),
        unknown_speech=sum(s.unknown_speech for s in scores),
        unknown_named=sum(s.unknown_named for s in scores),
        known_speech=sum(s.known_speech for s in scores),
        known_unnamed=sum(s.known_unnamed for s in scores),
        files=sum(s.files for s in scores),
    )


def _der_metric(collar: float) -> Any:
    try:
        from pyannote.metrics.diarization import (
            DiarizationErrorRate,
        )
    except ImportError:
        raise MissingDependencyError(
            "evaluating diarization needs pyannote.metrics: pip install 'speakerdb[diarize]'"
        ) from None
    # pyannote's collar is the total width around a boundary: 2 x the one-sided collar.
    return DiarizationErrorRate(collar=2 * collar, skip_overlap=False)


def _naming(
    reference: Sequence[RttmTurn],
    hypothesis: Sequence[RttmTurn],
    collar: float,
    known: Iterable[str] | None,
    duration: float | None,
) -> dict[str, float]:
    end = max([t.end for t in reference] + [t.end for t in hypothesis] + [duration or 0.0, _STEP])
    n = int(np.ceil(end / _STEP)) + 1
    speakers = sorted({t.speaker for t in reference})
    ref = np.zeros((len(speakers), n), dtype=bool)
    scored = np.ones(n, dtype=bool)
    index = {s: i for i, s in enumerate(speakers)}
    for t in reference:
        ref[index[t.speaker], _frame(t.start) : _frame(t.end)] = True
        for edge in (t.start, t.end):
            scored[max(0, _frame(edge - collar)) : _frame(edge + collar)] = False
    # For each frame: does the hypothesis name someone other than the reference speakers?
    names = sorted({t.speaker for t in hypothesis if is_name(t.speaker)})
    hyp_named = np.zeros((len(names), n), dtype=bool)
    nindex = {s: i for i, s in enumerate(names)}
    for t in hypothesis:
        if t.speaker in nindex:
            hyp_named[nindex[t.speaker], _frame(t.start) : _frame(t.end)] = True
    speech = ref.any(axis=0) & scored
    wrong = np.zeros(n, dtype=bool)
    for name, j in nindex.items():
        own = ref[index[name]] if name in index else np.zeros(n, dtype=bool)
        wrong |= hyp_named[j] & ~own
    known_set = set(known) if known is not None else set(names)
    unknown_rows = [index[s] for s in speakers if s not in known_set]
    unknown_speech = _any(ref, unknown_rows, n) & scored
    known_unnamed = np.zeros(n, dtype=bool)
    known_speech = np.zeros(n, dtype=bool)
    for s in speakers:
        if s not in known_set:
            continue
        mine = ref[index[s]] & scored
        known_speech |= mine
        named = hyp_named[nindex[s]] if s in nindex else np.zeros(n, dtype=bool)
        known_unnamed |= mine & ~named
    return {
        "wrong_name": float((wrong & speech).sum() * _STEP),
        "unknown_speech": float(unknown_speech.sum() * _STEP),
        "unknown_named": float((wrong & unknown_speech).sum() * _STEP),
        "known_speech": float(known_speech.sum() * _STEP),
        "known_unnamed": float(known_unnamed.sum() * _STEP),
    }


def _any(rows: npt.NDArray[np.bool_], which: list[int], n: int) -> npt.NDArray[np.bool_]:
    if not which:
        return np.zeros(n, dtype=bool)
    return np.asarray(rows[which].any(axis=0), dtype=bool)


def _frame(seconds: float) -> int:
    return max(0, round(seconds / _STEP))
