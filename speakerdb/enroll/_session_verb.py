"""SpeakerDB.session: a live session (:mod:`speakerdb.live`) judged by this database.

The judge is the file answers' own path: the model's ``embed`` on the session's 16 kHz
audio, the speaker's voiceprint (or the index search and :func:`rank_candidates` for
identification) and the database's decision policy, resolved once when the session opens.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.decisions import DecisionOptions, Scale, Side
from speakerdb.enroll._base import FacadeBase, options_of, side_of
from speakerdb.enroll._ranking import RERANKED_CANDIDATES, rank_candidates
from speakerdb.errors import UsageError
from speakerdb.model._audio import SAMPLE_RATE
from speakerdb.scoring import cosine
from speakerdb.storage._audit import PendingEntry

if TYPE_CHECKING:
    from speakerdb.live._events import Summary
    from speakerdb.live._judging import Judgement, Screen, SessionLimits
    from speakerdb.live._session import LiveSession

__all__ = ["SessionVerb"]


class SessionVerb(FacadeBase):
    """The live-session verb of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def session(
        self,
        speaker: str | None = None,
        *,
        limits: SessionLimits | None = None,
        threshold: float | None = None,
        prior: float | None = None,
        far: float | None = None,
        spoof_model: str | os.PathLike[str] | None = None,
        options: DecisionOptions | None = None,
    ) -> LiveSession:
        """A live session: verify ``speaker`` while the caller speaks, or (None) identify
        among everyone. Use as a context manager; ``feed(chunk, sample_rate)`` returns
        events, ``close()`` the summary (see :class:`speakerdb.live.LiveSession`).

        Decisions use the same embedder and decision policy as :meth:`verify` /
        :meth:`identify` (threshold / prior / far, or all as ``options``, as there; raw
        cosine scores, no AS-norm),
        and the database's countermeasure (or ``spoof_model``, this session only) as there:
        each segment is checked once and a detected attack is decided SPOOF_DETECTED.
        Raises SpeakerNotFoundError for an unknown speaker, UsageError for bad limits,
        ModelError / ModelMismatchError for a countermeasure it cannot load.
        """
        from speakerdb.live._judging import Anchor, Judgement, Probe
        from speakerdb.live._session import LiveSession
        from speakerdb.live._windows import window_encoder

        options = options_of(options, threshold, prior=prior, far=far)
        if options.norm is not Scale.COSINE:
            raise UsageError("live sessions decide on raw cosine scores: no score normalisation")
        policy = self.decision_policy(options)
        identity = self._check_model()
        model = self.model
        store = self.store
        voiceprints: dict[str, tuple[Side, npt.NDArray[np.float32]]] = {}

        def voiceprint(name: str) -> tuple[Side, npt.NDArray[np.float32]]:
            if name not in voiceprints:
                record, centroid = store.centroid(name)
                side = Side(record.speech_seconds, record.utterances, record.bandwidth_hz)
                voiceprints[name] = (side, centroid)
            return voiceprints[name]

        if speaker is not None:
            voiceprint(speaker)  # an unknown speaker fails now, not at the first decision

        def judge(
            samples: npt.NDArray[np.float32] | Probe, against: str | Anchor | None
        ) -> Judgement | None:
            if isinstance(samples, Probe):  # embedded already (window embeddings): the rule
                vector, band = samples.vector, samples.bandwidth_hz
                speech = samples.speech_seconds
                probe = Side(speech, 1, band)
            else:
                item = model.embed([samples], sample_rate=SAMPLE_RATE)[0]
                if item.vector is None:
                    return None
                probe = side_of(item)
                speech, vector = float(item.speech_seconds or 0.0), item.vector
                band = item.bandwidth_hz
            if against is not None:
                if isinstance(against, Anchor):  # the same voice as before? (compare's rule)
                    side = Side(against.speech_seconds, 1, against.bandwidth_hz)
                    raw, name = cosine(vector, against.vector), None
                else:
                    side, centroid = voiceprint(against)
                    raw, name = cosine(vector, centroid), against
                d = policy.decide([raw], [raw], [probe], [side])[0]
                return Judgement(
                    d.accepted, name, d.llr, d.score, d.threshold, d.rule, speech, vector, band
                )
            found = store.search(vector, RERANKED_CANDIDATES, identity)[0]
            ranked, rule = rank_candidates(policy, found, {c.id: c.score for c in found}, probe)
            if not ranked:
                return Judgement(
                    False, None, None, float("-inf"), rule.threshold, rule, speech, vector, band
                )
            best, d = ranked[0]
            return Judgement(
                d.accepted, best.name, d.llr, d.score, rule.threshold, rule, speech, vector, band
            )

        def record(summary: Summary) -> None:
            # One audit entry per session, with its final decision (a lookup like verify /
            # identify); the decisions on the way are in the summary, not the log.
            last = summary.decisions[-1] if summary.decisions else None
            who = summary.speaker
            if who is None and last is not None:
                who = last.speaker
            detail = {
                "live": True,
                "speech_seconds": round(summary.speech_seconds, 2),
                "decisions": len(summary.decisions),
                "speaker_changes": len(summary.changes),
            }
            entry = PendingEntry(
                summary.mode,
                speaker=who,
                decision=summary.decision.lower(),
                score=last.score if last is not None and math.isfinite(last.score) else None,
                detail=detail,
            )
            store.record_lookups([entry])

        return LiveSession(
            judge,
            speaker,
            limits,
            on_close=record,
            screen=self._session_screen(spoof_model),
            windows=window_encoder(model),
        )

    def _session_screen(self, spoof_model: str | os.PathLike[str] | None) -> Screen | None:
        """The countermeasure as a session's :class:`~speakerdb.live.Screen`, or None."""
        from speakerdb.enroll._spoof import spoof_answer
        from speakerdb.live._judging import Screen, SpoofCheck

        cm = self._database_countermeasure(spoof_model)
        if cm is None:
            return None

        def check(samples: npt.NDArray[np.float32]) -> SpoofCheck:
            scored = cm.score([samples], sample_rate=SAMPLE_RATE)[0]
            return SpoofCheck(scored.detected, spoof_answer(cm, scored))

        return Screen(cm.input_samples, check)
