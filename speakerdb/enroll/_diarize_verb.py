"""SpeakerDB's diarization verb: who spoke when, named after the enrolled speakers (see
:mod:`speakerdb.diarize` and :mod:`._diarization`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb._calibration import OperatingPoint
from speakerdb.enroll._base import (
    FacadeBase,
    options_of,
)
from speakerdb.enroll._cohort import normalization
from speakerdb.errors import SpeakerDBError
from speakerdb.model._audio import AudioInput
from speakerdb.scoring import DEFAULT_COHORT_TOP_N
from speakerdb.storage._records import Candidate

if TYPE_CHECKING:
    from speakerdb.diarize import Diarization, DiarizationSettings, VoiceAnalysis
    from speakerdb.enroll._ray_batch import RayOptions


__all__ = ["NAMING_PRIOR", "DiarizeVerb"]

NAMING_PRIOR = 0.005
"""The target prior at which voices are named with the database's own calibration of
AS-norm scores (LLR threshold ln 199 = 5.3), unless the call or the stored setting asks for
a stricter one. Chosen on both development conversation sets (benchmarks/diarize_naming.py,
priors 0.2 ... 0.0001): the prior naming the most known speech with unknown speech named
<= 1 % and wrong names <= 2 % on each. Leave-one-set-out: the 8 kHz set alone chooses it
too (held out on 16 kHz: 79.0 % of known speech named, 0.17 % of unknown speech named); the
16 kHz set alone chooses 0.05, which on 8 kHz names 88.8 % but also 2.7 % of unknown speech
(a voice that holds two speakers), so that choice does not transfer (docs/diarization.md)."""


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
        norm: str | None = "auto",
        cohort_size: int | None = None,
        sample_rate: int | None = None,
        progress: Callable[[float, float], None] | None = None,
        spoof_model: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Diarization:
        """Who spoke when, by name: the recording's voices (see :mod:`speakerdb.diarize`),
        each named after the enrolled speaker its voiceprint matches under this database's
        decision rule (calibrated when it is), one-to-one; others are ``unknown_N``.

        num_speakers / min_speakers / max_speakers: what is known of the number of voices.
        threshold / prior / far: as for :meth:`verify_many`. norm "asnorm": each voice's
        candidates are scored with AS-norm against the other enrolled speakers (as
        :meth:`identify` does) and decided by the database's calibration of AS-norm scores
        (``calibrate_from_enrollments(norm="asnorm")``, or a threshold); None: raw cosines
        and the database's rule for them; "auto" (the default): "asnorm" when the database
        has fitted its own calibration of AS-norm scores, else None. With that calibration
        and no threshold / prior / far, voices are named at :data:`NAMING_PRIOR` (or the
        stored operating point when it is stricter). cohort_size: AS-norm's top-N (default
        :data:`speakerdb.scoring.DEFAULT_COHORT_TOP_N`). options: further
        :class:`speakerdb.diarize.DiarizationSettings` fields (window, hop,
        cluster_threshold, min_turn, max_pause). progress: ``progress(seconds_done,
        total_seconds)`` while the recording is read. Without a database (opened with
        ``missing_ok``) the voices keep anonymous labels ``speaker_N``. Where the database has
        a countermeasure (or ``spoof_model`` names one for this call), every voice the rule
        named is checked on its own speech and one detected as an attack is not named
        (:mod:`._diarize_spoof`).

        Raises UsageError for bad settings, AudioError subclasses for unusable audio
        (NoSpeechError when there is no speech), ModelMismatchError when the database holds
        another model's voiceprints. Never changes the database.
        """
        from speakerdb.diarize import analyse_voices

        settings = _settings(num_speakers, min_speakers, max_speakers, options)
        finish = self._namer(norm, threshold, prior, far, cohort_size, spoof_model, sample_rate)
        analysis = analyse_voices(
            audio, self.model, settings, sample_rate=sample_rate, progress=progress
        )
        return finish(analysis, audio)

    def diarize_on_ray(
        self,
        audio: Sequence[str | os.PathLike[str]],
        ray: RayOptions | str,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        threshold: float | None = None,
        prior: float | None = None,
        far: float | None = None,
        norm: str | None = "auto",
        cohort_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        spoof_model: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Iterator[tuple[int, Diarization | SpeakerDBError]]:
        """:meth:`diarize` for each file of ``audio`` with the voices found on a Ray cluster
        (``ray``: an address, "local" or "auto", or :class:`RayOptions`; extra
        ``speakerdb[ray]``): yields ``(index, the Diarization or the SpeakerDBError that
        :meth:`diarize` would raise)`` in the order of ``audio``. Each worker loads the model
        once and returns each recording's voice analysis; the voices are named here, against
        this database, by the same code as :meth:`diarize` (the workers never open the
        database). progress: ``progress(files_done, files)``.

        Raises UsageError for bad settings or options, ConfigurationError when the cluster
        cannot be reached or its job fails. Never changes the database.
        """
        from speakerdb.enroll._ray_batch import ray_options
        from speakerdb.enroll._ray_diarize import ray_iter_analyse

        checked = ray_options(ray)
        settings = _settings(num_speakers, min_speakers, max_speakers, options)
        paths = [str(a) for a in audio]
        try:
            finish = self._namer(norm, threshold, prior, far, cohort_size, spoof_model, None)
        except SpeakerDBError as exc:
            # diarize raises it for every recording before reading any: so does this.
            for index in range(len(paths)):
                yield index, exc
            return
        pending: dict[int, Diarization | SpeakerDBError] = {}
        following = 0
        for done, (index, found) in enumerate(
            ray_iter_analyse(checked, self.identity, paths, settings), start=1
        ):
            if isinstance(found, SpeakerDBError):
                pending[index] = found
            else:
                try:
                    pending[index] = finish(found, paths[index])
                except SpeakerDBError as exc:
                    pending[index] = exc
            if progress is not None:
                progress(done, len(paths))
            while following in pending:
                yield following, pending.pop(following)
                following += 1

    def _namer(
        self,
        norm: str | None,
        threshold: float | None,
        prior: float | None,
        far: float | None,
        cohort_size: int | None,
        spoof_model: str | os.PathLike[str] | None,
        sample_rate: int | None,
    ) -> Callable[[VoiceAnalysis, AudioInput], Diarization]:
        """What turns a recording's voice analysis into its Diarization under this
        database's rule (anonymous voices without a database). Raises what :meth:`diarize`
        raises before reading audio (UsageError, ModelMismatchError)."""
        from speakerdb.diarize._pipeline import anonymous
        from speakerdb.enroll._diarization import name_voices

        if self._store is None:
            label = self.identity.label
            return lambda analysis, _audio: anonymous(analysis, label)
        key = self._naming_normalization(norm)
        if key is not None and threshold is None and prior is None and far is None:
            prior = self._naming_prior(key)
        decision = options_of(None, threshold, norm=key, prior=prior, far=far)
        policy = self.decision_policy(decision)
        identity = self._check_model()
        top_n = DEFAULT_COHORT_TOP_N if cohort_size is None else int(cohort_size)

        def asnorm(
            probes: npt.NDArray[np.float32], found: list[list[Candidate]]
        ) -> list[list[Candidate]]:
            return self._cohorts.rescore_candidates(probes, found, None, top_n)

        def finish(analysis: VoiceAnalysis, audio: AudioInput) -> Diarization:
            named = name_voices(
                analysis, policy, identity, self.store, asnorm if key is not None else None
            )
            cm = self._database_countermeasure(spoof_model)
            if cm is None:
                return named
            from speakerdb.enroll._diarize_spoof import screen_named_voices

            return screen_named_voices(named, cm, audio, sample_rate)

        return finish

    def _naming_normalization(self, norm: str | None) -> str | None:
        """The normalisation naming uses: ``norm``, or for "auto" AS-norm when this
        database has fitted its own calibration of AS-norm scores (else raw cosines)."""
        if norm != "auto":
            return normalization(norm)
        _, setting = self.store.calibration_setting("asnorm")
        return "asnorm" if setting is not None and setting.kind == "llr" else None

    def _naming_prior(self, key: str) -> float | None:
        """The prior naming decides at with the database's calibration of ``key`` scores:
        :data:`NAMING_PRIOR`, or the stored operating point's when stricter; None (the
        stored rule as it is) without a calibration or with a false-accept target."""
        _, setting = self.store.calibration_setting(key)
        if setting is None or setting.kind != "llr" or setting.target_far is not None:
            return None
        stored = OperatingPoint(
            setting.p_target if setting.p_target is not None else 0.01,
            setting.c_miss if setting.c_miss is not None else 1.0,
            setting.c_fa if setting.c_fa is not None else 1.0,
        ).effective_prior
        return min(NAMING_PRIOR, stored)


def _settings(
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
    options: dict[str, Any],
) -> DiarizationSettings:
    from speakerdb.diarize import DiarizationSettings

    return DiarizationSettings.of(num_speakers, min_speakers, max_speakers, options)
