"""The countermeasure on verification probes: one more check, one decision.

A probe is accepted iff the speaker rule accepts it AND the database's countermeasure does
not detect an attack (its calibrated bona fide-vs-spoof LLR at or above its threshold;
docs/spoofing.md). A detected attack is the decision ``SPOOF_DETECTED``, never accepted.
Probes under :data:`speakerdb.model._countermeasure.MIN_COUNTERMEASURE_SECONDS`, or scored
by a countermeasure without a calibration, carry the countermeasure's answer with
``detected`` None and are decided by the speaker rule alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from speakerdb._results import Identification, Verification
from speakerdb.errors import AudioError, ModelMismatchError

if TYPE_CHECKING:
    from speakerdb.model._audio import AudioInput
    from speakerdb.model._countermeasure import Countermeasure, SpoofScore
    from speakerdb.model._embedder import EmbeddedAudio
    from speakerdb.storage._countermeasure_record import CountermeasureRecord

__all__ = [
    "SPOOF_DETECTED",
    "own_calibration",
    "recorded_countermeasure",
    "refuse_spoofs",
    "screen",
    "spoof_answer",
    "spoof_scores",
]

SPOOF_DETECTED = "SPOOF_DETECTED"


def recorded_countermeasure(
    cache: dict[str, Countermeasure], record: CountermeasureRecord
) -> Countermeasure:
    """The database's countermeasure, loaded from where it was recorded (once per process
    and weights). Raises ModelNotFoundError / ModelError as :func:`load_countermeasure`, and
    ModelMismatchError when the file there is no longer the recorded weights."""
    from speakerdb.model._countermeasure import load_countermeasure

    if record.weights_sha256 not in cache:
        loaded = load_countermeasure(Path(record.source))
        if loaded.identity.weights_sha256 != record.weights_sha256:
            raise ModelMismatchError(
                f"the countermeasure file {record.source} is no longer the one this database "
                f"records (sha256 {record.weights_sha256[:12]}..., found "
                f"{loaded.identity.weights_sha256[:12]}...); run `speakerdb spoof use PATH`"
            )
        cache[record.weights_sha256] = loaded
    return cache[record.weights_sha256]


def own_calibration(
    cache: dict[str, Countermeasure], cm: Countermeasure, stored: dict[str, Any] | None
) -> Countermeasure:
    """``cm`` with the database's own spoof calibration (``stored``, from ``speakerdb spoof
    calibrate``) when it was fitted for these weights, else ``cm`` unchanged (its bundled
    calibration). The network is shared; one object per weights and fit. Raises ModelError
    for a stored calibration it cannot read."""
    from speakerdb._spoof_calibration import SpoofCalibration
    from speakerdb.enroll._spoof_fit import stored_identity
    from speakerdb.model._countermeasure import Countermeasure

    if stored is None or stored_identity(stored) != cm.identity.weights_sha256:
        return cm
    key = f"own:{cm.identity.weights_sha256}:{stored.get('fitted')}"
    if key not in cache:
        cache[key] = Countermeasure(cm.net, cm.identity, SpoofCalibration.from_dict(stored))
    return cache[key]


def spoof_answer(cm: Countermeasure, scored: SpoofScore) -> dict[str, Any]:
    """The ``spoof`` part of an answer: {"model", "score", "llr", "detected"}."""
    return {
        "model": cm.identity.label,
        "score": scored.score,
        "llr": scored.llr,
        "detected": scored.detected,
    }


def spoof_scores(
    cm: Countermeasure,
    audio: Sequence[AudioInput],
    embedded: Sequence[EmbeddedAudio],
    wanted: Sequence[int],
    sample_rate: int | None,
) -> list[SpoofScore]:
    """The countermeasure's scores of ``audio[i]`` for i in ``wanted``, from the samples the
    speaker model's decode kept (``embedded[i].head``, resampled the countermeasure's way
    beside the speaker model's; the engine was asked for ``cm.input_samples`` of them); only
    recordings without them (an engine result made without ``head_samples``) are decoded
    again."""
    shared = [i for i in wanted if embedded[i].head is not None]
    scored = dict(
        zip(
            shared,
            cm.score_decoded(
                [
                    (e.source, e.head, e.head_bandwidth_hz, e.head_seconds or 0.0)
                    for e in (embedded[i] for i in shared)
                    if e.head is not None
                ]
            ),
            strict=True,
        )
    )
    again = [i for i in wanted if i not in scored]
    scored.update(
        zip(again, cm.score([audio[i] for i in again], sample_rate=sample_rate), strict=True)
    )
    return [scored[i] for i in wanted]


Screened = TypeVar("Screened", Verification, Identification)


def screen(
    cm: Countermeasure,
    audio: Sequence[AudioInput],
    embedded: Sequence[EmbeddedAudio],
    results: list[Screened | AudioError],
    sample_rate: int | None,
) -> list[Screened | AudioError]:
    """``results`` (one per ``audio`` item, ``embedded`` its engine results) with the
    countermeasure's answer on every decided probe; a detected attack becomes decision
    SPOOF_DETECTED: a verification not accepted, an identification of nobody."""
    probes = [i for i, r in enumerate(results) if not isinstance(r, AudioError)]
    scored = spoof_scores(cm, audio, embedded, probes, sample_rate)
    out = list(results)
    for i, s in zip(probes, scored, strict=True):
        if s.error is not None:
            out[i] = s.error if isinstance(s.error, AudioError) else out[i]
            continue
        decided = results[i]
        assert not isinstance(decided, AudioError)
        detected = s.detected is True
        answer = spoof_answer(cm, s)
        decision = SPOOF_DETECTED if detected else None
        if isinstance(decided, Verification):
            out[i] = dataclasses.replace(
                decided,
                spoof=answer,
                accepted=decided.accepted and not detected,
                decision=decision,
            )
        else:
            best = None if detected else decided.best
            out[i] = dataclasses.replace(decided, spoof=answer, best=best, decision=decision)
    return out


def refuse_spoofs(
    cm: Countermeasure,
    audio: Sequence[AudioInput],
    embedded: Sequence[EmbeddedAudio],
    sample_rate: int | None = None,
) -> list[EmbeddedAudio]:
    """``embedded`` with every recording the countermeasure detects as an attack turned into
    a SpoofDetectedError (enrollment reports it rejected, reason ``spoof_detected``).
    Recordings skipped or unusable already are left as they are; ones under 2 s (not
    judged) pass."""
    from speakerdb.errors import SpoofDetectedError

    wanted = [i for i, e in enumerate(embedded) if e.vector is not None and not e.skipped]
    out = list(embedded)
    for i, s in zip(wanted, spoof_scores(cm, audio, embedded, wanted, sample_rate), strict=True):
        if s.detected is True:
            reason = f"detected as spoofed speech by {cm.identity.label} (llr {s.llr or 0:.2f})"
            out[i] = dataclasses.replace(
                embedded[i], vector=None, error=SpoofDetectedError(embedded[i].source, reason)
            )
    return out
