"""The database's spoofing countermeasure: which one it records, recording one, stopping,
and calibrating it on the owner's recordings (issue 19; docs/spoofing.md). Verification
runs it through :mod:`._spoof`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from speakerdb.enroll._base import FacadeBase
from speakerdb.storage._audit import PendingEntry, lookups_unrecorded

if TYPE_CHECKING:
    from speakerdb.enroll._sasv import SasvReport
    from speakerdb.enroll._spoof_fit import SpoofFit
    from speakerdb.storage._countermeasure_record import CountermeasureRecord

__all__ = ["SpoofVerbs"]


class SpoofVerbs(FacadeBase):
    """Countermeasure administration of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def countermeasure(self) -> CountermeasureRecord | None:
        """The spoofing countermeasure this database records, or None. Raises StoreError."""
        from speakerdb.storage._countermeasure_record import read_countermeasure

        return read_countermeasure(self.store)

    def use_countermeasure(self, path: str | os.PathLike[str]) -> CountermeasureRecord:
        """Record the countermeasure at ``path`` (an AASIST / AASIST-L checkpoint) as this
        database's. It is loaded first, with every check of
        :func:`speakerdb.load_countermeasure`: a file it refuses (ModelError,
        ModelNotFoundError) changes nothing."""
        from speakerdb.model._countermeasure import load_countermeasure
        from speakerdb.storage._countermeasure_record import (
            CountermeasureRecord,
            write_countermeasure,
        )

        found = load_countermeasure(path).identity
        record = CountermeasureRecord(found.family, found.variant, found.weights_sha256, found.path)
        write_countermeasure(self.store, record)
        return record

    def clear_countermeasure(self) -> CountermeasureRecord | None:
        """Stop recording a countermeasure; returns the one there was (None: none)."""
        from speakerdb.storage._countermeasure_record import write_countermeasure

        previous = self.countermeasure()
        write_countermeasure(self.store, None)
        return previous

    def calibrate_countermeasure(
        self,
        recordings: str | os.PathLike[str],
        *,
        spoof_model: str | os.PathLike[str] | None = None,
        max_flag_rate: float | None = None,
        bona_fide_only: bool = False,
    ) -> SpoofFit:
        """Fit the countermeasure's calibration on labelled recordings of your own channel
        (an SASV trial list or a JSON-lines manifest: :mod:`._spoof_fit`) and store it in the
        database: from then on it replaces the bundled one wherever these weights run.
        ``max_flag_rate``: the share of any bona fide group allowed to be flagged at the
        threshold (default 0.05). ``bona_fide_only``: the recordings are real speech of your
        channel and nothing else (any speaker manifest); the bundled calibration is adapted
        to them (each band's offset), not refitted. Raises UsageError (no countermeasure, a
        bad list, too few recordings, attacks listed with ``bona_fide_only``), ModelError,
        StoreError."""
        import hashlib
        from pathlib import Path

        from speakerdb._spoof_calibration import DEFAULT_MAX_FLAG_RATE
        from speakerdb.enroll._spoof_fit import fit_on_recordings, read_labelled_recordings
        from speakerdb.errors import UsageError
        from speakerdb.storage._countermeasure_record import write_spoof_calibration

        if self.store.read_only:  # before minutes of scoring, not after
            raise UsageError("cannot store a spoof calibration: the database is read-only")
        cm = self._database_countermeasure(spoof_model)
        if cm is None:
            raise UsageError(
                "no countermeasure to calibrate: `speakerdb spoof use PATH` first, or "
                "--spoof-model PATH"
            )
        path = Path(recordings)
        items = read_labelled_recordings(path, bona_fide_default=bona_fide_only)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        fit = fit_on_recordings(
            cm,
            items,
            max_flag_rate=DEFAULT_MAX_FLAG_RATE if max_flag_rate is None else max_flag_rate,
            bona_fide_only=bona_fide_only,
            note=f"{path.name} sha256 {digest}",
        )
        write_spoof_calibration(self.store, fit.calibration.to_dict())
        return fit

    def countermeasure_calibration(self) -> dict[str, Any] | None:
        """The spoof calibration this database stores (``spoof calibrate``): its JSON with
        "fitted" (ISO time), or None (the bundled calibration applies)."""
        from speakerdb.storage._countermeasure_record import read_spoof_calibration

        return read_spoof_calibration(self.store)

    def reset_countermeasure_calibration(self) -> bool:
        """Remove the database's own spoof calibration (the bundled one applies again);
        returns whether there was one."""
        from speakerdb.storage._countermeasure_record import write_spoof_calibration

        had = self.countermeasure_calibration() is not None
        write_spoof_calibration(self.store, None)
        return had

    def evaluate_sasv(
        self,
        trials: str | os.PathLike[str],
        *,
        spoof_model: str | os.PathLike[str] | None = None,
    ) -> SasvReport:
        """Spoofing-aware evaluation on an SASV trial list (see :mod:`._sasv`): each probe
        verified against its claimed (enrolled) speaker with this database's rule and its
        countermeasure (or ``spoof_model``). Unusable probes are counted in ``unscored``.
        Raises UsageError (bad list; no countermeasure or no calibration for it),
        SpeakerNotFoundError, ModelError."""
        import math
        from pathlib import Path

        from speakerdb._results import Verification
        from speakerdb.enroll._sasv import read_sasv_trials, sasv_metrics
        from speakerdb.errors import UsageError

        cm = self._database_countermeasure(spoof_model)
        if cm is None or cm.calibration is None:
            raise UsageError(
                "SASV evaluation needs a calibrated countermeasure: `speakerdb spoof use PATH` "
                "or --spoof-model PATH"
            )
        spoof_threshold = cm.calibration.threshold
        listed = read_sasv_trials(Path(trials))
        by_speaker: dict[str, list[int]] = {}
        for i, t in enumerate(listed):
            by_speaker.setdefault(t.speaker, []).append(i)
        kinds: list[str] = []
        speaker_margin: list[float] = []
        spoof_margin: list[float] = []
        unscored = 0
        for speaker, indices in by_speaker.items():
            # One audit entry for the run (below), not one verify entry per trial.
            with lookups_unrecorded():
                answers = self.verify_many(  # type: ignore[attr-defined]
                    speaker, [listed[i].path for i in indices], spoof_model=spoof_model
                )
            for i, answer in zip(indices, answers, strict=True):
                if not isinstance(answer, Verification) or answer.spoof is None:
                    unscored += 1
                    continue
                kinds.append(listed[i].kind)
                speaker_margin.append(answer.score - answer.threshold)
                judged = answer.spoof["detected"] is not None
                spoof_margin.append(answer.spoof["llr"] - spoof_threshold if judged else math.inf)
        if not kinds:
            raise UsageError(f"{trials}: no trial could be scored")
        report = sasv_metrics(kinds, speaker_margin, spoof_margin)
        report.unscored = unscored
        detail = {"kind": "sasv", "trials": len(listed), "unscored": unscored}
        self.store.record_lookups([PendingEntry("evaluate", detail=detail)])
        return report
