"""Fitting a database's own spoof calibration (``speakerdb spoof calibrate``).

The countermeasure's raw output moves with the channel (docs/spoofing.md): the bundled
calibration was fitted on the development recordings, and a user's own bona fide speech and
attacks calibrate it for their channel. The labelled recordings come from an SASV trial list
(``<target|nontarget|spoof> <speaker> <path>``: target and nontarget probes are bona fide
speech) or a JSON-lines manifest (``{"audio_filepath", "spoof": bool, "attack"?}``). Each
distinct recording is scored once; the fit weights every condition alike: bona fide speech by
band (narrowband / wideband, measured), attacks by their ``attack`` name (a manifest) or as one
group (an SASV list).

A channel's bona fide speech alone (no attacks: what a call centre has) adapts the bundled
calibration instead (``bona_fide_only``; :func:`.adapt_spoof_calibration`): the offset of each
band so that the allowed share of that speech is flagged, the bundled slope kept. Such a list
may be any speaker manifest (lines without ``"spoof"`` are bona fide).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speakerdb._spoof_calibration import (
    DEFAULT_MAX_FLAG_RATE,
    NARROWBAND_HZ,
    SpoofCalibration,
    adapt_spoof_calibration,
    bundled_spoof_calibration,
    fit_spoof_calibration,
)
from speakerdb.enroll._sasv import read_sasv_trials
from speakerdb.errors import UsageError

if TYPE_CHECKING:
    from speakerdb.model._countermeasure import Countermeasure

__all__ = [
    "MIN_RECORDINGS_PER_CLASS",
    "LabelledRecording",
    "SpoofFit",
    "fit_on_recordings",
    "read_labelled_recordings",
    "stored_identity",
]

MIN_RECORDINGS_PER_CLASS = 20
"""Fewest usable bona fide and attack recordings a fit takes (a floor, not tuned: with fewer
bona fide recordings the 5 % flag-rate threshold is the lowest bona fide score)."""


@dataclass(frozen=True)
class LabelledRecording:
    path: Path
    bonafide: bool
    attack: str | None  # the attack's name where the list gives one
    speaker: str | None = None  # who speaks, where the list says (bona fide speech)


@dataclass
class SpoofFit:
    """What ``spoof calibrate`` reports: the calibration, the recordings it saw per group,
    the share of each group flagged at its threshold, and the recordings left out (could not
    be decoded, or under the 2 s the countermeasure needs)."""

    calibration: SpoofCalibration
    groups: dict[str, int]
    flagged: dict[str, float]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "countermeasure": dict(self.calibration.countermeasure),
            "threshold": self.calibration.threshold,
            "max_flag_rate": self.calibration.fit.get("max_flag_rate"),
            "groups": self.groups,
            "flagged": self.flagged,
            "skipped": self.skipped,
        }


def read_labelled_recordings(
    path: Path, *, bona_fide_default: bool = False
) -> list[LabelledRecording]:
    """The distinct recordings of an SASV trial list or a JSON-lines manifest, labelled.
    bona_fide_default: manifest lines without ``"spoof"`` are bona fide (else an error).
    Raises UsageError for an unreadable or malformed file, or one recording labelled both."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    found: dict[Path, LabelledRecording] = {}
    if first.lstrip().startswith("{"):
        items = _manifest(path, text, bona_fide_default)
    else:
        items = [
            LabelledRecording(
                t.path, t.kind != "spoof", None, t.speaker if t.kind == "target" else None
            )
            for t in read_sasv_trials(path)
        ]
    for item in items:
        seen = found.setdefault(item.path, item)
        if seen.bonafide != item.bonafide:
            raise UsageError(f"{path}: {item.path} is listed both as bona fide and as an attack")
    return list(found.values())


def _manifest(path: Path, text: str, bona_fide_default: bool) -> list[LabelledRecording]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            audio = entry["audio_filepath"]
            spoofed = entry.get("spoof", False) if bona_fide_default else entry["spoof"]
            if not isinstance(audio, str) or not isinstance(spoofed, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f'{path}:{number}: expected {{"audio_filepath": PATH, "spoof": true|false}}'
            ) from None
        attack = entry.get("attack") if spoofed else None
        label = entry.get("label")
        out.append(
            LabelledRecording(
                (path.parent / audio).resolve(),
                not spoofed,
                str(attack) if attack else None,
                None if spoofed or label is None else str(label),
            )
        )
    if not out:
        raise UsageError(f"{path}: no recordings")
    return out


def fit_on_recordings(
    cm: Countermeasure,
    recordings: list[LabelledRecording],
    *,
    max_flag_rate: float = DEFAULT_MAX_FLAG_RATE,
    bona_fide_only: bool = False,
    note: str = "",
) -> SpoofFit:
    """Score ``recordings`` with ``cm`` and fit its calibration on them (see the module
    docstring); with ``bona_fide_only``, adapt the bundled calibration of ``cm``'s weights to
    them instead. Raises UsageError with fewer than :data:`MIN_RECORDINGS_PER_CLASS` usable
    recordings of either class (bona fide only: of one band), a bad ``max_flag_rate``, or,
    bona fide only, attacks in the list or no bundled calibration for the weights."""
    from speakerdb.model._countermeasure import MIN_COUNTERMEASURE_SECONDS

    if not 0.0 < max_flag_rate < 1.0:
        raise UsageError("--max-flag-rate must be in (0, 1)")
    base = None
    if bona_fide_only:
        attacks = sum(not r.bonafide for r in recordings)
        if attacks:
            raise UsageError(
                f"--bona-fide-only takes bona fide recordings only; the list has {attacks} "
                "attacks (without the option, attacks and bona fide speech are fitted together)"
            )
        base = bundled_spoof_calibration(cm.identity.weights_sha256)
        if base is None:
            raise UsageError(
                f"no bundled spoof calibration for {cm.identity.label} to adapt: calibrate "
                "it on bona fide recordings and attacks (without --bona-fide-only)"
            )
    scored = cm.score([r.path for r in recordings])
    raw, band, labels, groups, speakers = [], [], [], [], []
    skipped: list[dict[str, str]] = []
    for item, s in zip(recordings, scored, strict=True):
        if s.error is not None:
            skipped.append({"source": str(item.path), "reason": s.error.code})
            continue
        if (s.seconds or 0.0) < MIN_COUNTERMEASURE_SECONDS:
            skipped.append({"source": str(item.path), "reason": "too_short"})
            continue
        assert s.llr_input is not None and s.bandwidth_hz is not None
        raw.append(s.llr_input)
        band.append(s.bandwidth_hz)
        labels.append(1 if item.bonafide else 0)
        speakers.append(item.speaker)
        if item.bonafide:
            groups.append(
                "bonafide-" + ("narrowband" if s.bandwidth_hz < NARROWBAND_HZ else "wideband")
            )
        else:
            groups.append(f"spoof-{item.attack}" if item.attack else "spoof")
    identity = {
        "family": cm.identity.family,
        "variant": cm.identity.variant,
        "weights_sha256": cm.identity.weights_sha256,
    }
    if base is not None:
        calibration = adapt_spoof_calibration(
            base,
            raw,
            band,
            speakers,
            max_flag_rate=max_flag_rate,
            min_per_band=MIN_RECORDINGS_PER_CLASS,
            note=note,
        )
        return _report(calibration, raw, band, groups, skipped)
    bona = sum(labels)
    if min(bona, len(labels) - bona) < MIN_RECORDINGS_PER_CLASS:
        raise UsageError(
            f"too few recordings to fit a spoof calibration: {bona} bona fide and "
            f"{len(labels) - bona} attacks usable (need {MIN_RECORDINGS_PER_CLASS} of each"
            + ("; bona fide speech alone: --bona-fide-only)" if bona == len(labels) else ")")
        )
    calibration = fit_spoof_calibration(
        raw, band, labels, groups, countermeasure=identity, max_flag_rate=max_flag_rate, note=note
    )
    return _report(calibration, raw, band, groups, skipped)


def _report(
    calibration: SpoofCalibration,
    raw: list[float],
    band: list[float],
    groups: list[str],
    skipped: list[dict[str, str]],
) -> SpoofFit:
    llr = calibration.llrs(raw, band)
    g = np.asarray(groups)
    counts = {name: int((g == name).sum()) for name in sorted(set(groups))}
    flagged = {name: float(np.mean(llr[g == name] < calibration.threshold)) for name in counts}
    return SpoofFit(calibration, counts, flagged, skipped)


def stored_identity(stored: Mapping[str, Any]) -> str | None:
    """The weights' sha256 a stored spoof calibration is for."""
    cm = stored.get("countermeasure")
    return str(cm.get("weights_sha256")) if isinstance(cm, Mapping) else None
