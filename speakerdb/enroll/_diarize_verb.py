"""SpeakerDB's diarization verb: who spoke when, named after the enrolled speakers (see
:mod:`speakerdb.diarize` and :mod:`._diarization`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from speakerdb.enroll._base import (
    FacadeBase,
)
from speakerdb.errors import UsageError
from speakerdb.model._audio import AudioInput

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
        sample_rate: int | None = None,
        progress: Callable[[float, float], None] | None = None,
        **options: Any,
    ) -> Diarization:
        """Who spoke when, by name: the recording's voices (see :mod:`speakerdb.diarize`),
        each named after the enrolled speaker its voiceprint matches under this database's
        decision rule (calibrated when it is), one-to-one; others are ``unknown_N``.

        num_speakers / min_speakers / max_speakers: what is known of the number of voices.
        threshold / prior / far: as for :meth:`verify_many`. options: further
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
        policy = self.decision_policy(None, threshold=threshold, prior=prior, far=far)
        identity = self._check_model()
        analysis = analyse_voices(
            audio, self.model, settings, sample_rate=sample_rate, progress=progress
        )
        return name_voices(analysis, policy, identity, self.store)
