"""SpeakerDB's diarization verb: who spoke when, named after the enrolled speakers (see
:mod:`speakerdb.diarize` and :mod:`._diarization`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb.enroll._base import (
    FacadeBase,
    options_of,
)
from speakerdb.errors import UsageError
from speakerdb.model._audio import AudioInput
from speakerdb.scoring import DEFAULT_COHORT_TOP_N
from speakerdb.storage._records import Candidate

if TYPE_CHECKING:
    from speakerdb.diarize import Diarization


__all__ = ["DiarizeVerb"]


class DiarizeVerb(FacadeBase):
    """The diarization verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    # --- diarization ----------------------------------------------------------------------------

    def diarize(
        self,
        audio: AudioInput,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        threshold: float | None = None,
        prior: float | None = None,
        far: float | None = None,
        norm: str | None = None,
        cohort_size: int | None = None,
        sample_rate: int | None = None,
        progress: Callable[[float, float], None] | None = None,
        **options: Any,
    ) -> Diarization:
        """Who spoke when, by name: the recording's voices (see :mod:`speakerdb.diarize`),
        each named after the enrolled speaker its voiceprint matches under this database's
        decision rule (calibrated when it is), one-to-one; others are ``unknown_N``.

        num_speakers / min_speakers / max_speakers: what is known of the number of voices.
        threshold / prior / far: as for :meth:`verify_many`. norm "asnorm": each voice's
        candidates are scored with AS-norm against the other enrolled speakers (as
        :meth:`identify` does) and decided by the database's calibration of AS-norm scores
        (``calibrate_from_enrollments(norm="asnorm")``, or a threshold); cohort_size: its
        top-N (default :data:`speakerdb.scoring.DEFAULT_COHORT_TOP_N`). options: further
        :class:`speakerdb.diarize.DiarizationSettings` fields (window, hop,
        cluster_threshold, min_turn, max_pause). progress: ``progress(seconds_done,
        total_seconds)`` while the recording is read. Without a database (opened with
        ``missing_ok``) the voices keep anonymous labels ``speaker_N``.

        Raises UsageError for bad settings, AudioError subclasses for unusable audio
        (NoSpeechError when there is no speech), ModelMismatchError when the database holds
        another model's voiceprints. Never changes the database.
        """
        from speakerdb.diarize import DiarizationSettings, analyse_voices
        from speakerdb.diarize._pipeline import anonymous
        from speakerdb.enroll._diarization import name_voices

        try:
            settings = DiarizationSettings(
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                **options,
            )
        except TypeError as exc:
            raise UsageError(f"unknown diarization option ({exc})") from None
        settings.check()
        if self._store is None:
            analysis = analyse_voices(
                audio, self.model, settings, sample_rate=sample_rate, progress=progress
            )
            return anonymous(analysis, self.identity.label)
        decision = options_of(None, threshold, norm=norm, prior=prior, far=far)
        key = decision.normalization
        policy = self.decision_policy(decision)
        identity = self._check_model()
        analysis = analyse_voices(
            audio, self.model, settings, sample_rate=sample_rate, progress=progress
        )
        top_n = DEFAULT_COHORT_TOP_N if cohort_size is None else int(cohort_size)

        def asnorm(
            probes: npt.NDArray[np.float32], found: list[list[Candidate]]
        ) -> list[list[Candidate]]:
            return self._cohorts.rescore_candidates(probes, found, None, top_n)

        return name_voices(
            analysis, policy, identity, self.store, asnorm if key is not None else None
        )
