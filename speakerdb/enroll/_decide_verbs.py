"""SpeakerDB's decision verbs: verify (a recording against an enrolled speaker), compare (file
against file), identify (a recording against everyone), each for one input or many, each
deciding with the database's one rule (:mod:`._policy`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from speakerdb._results import Comparison, Identification, Match, Verification
from speakerdb.decisions import DecisionOptions, Side
from speakerdb.enroll._base import (
    FacadeBase,
    Progress,
    error_of,
    options_of,
    side_of,
    vector_of,
)
from speakerdb.enroll._ranking import RERANKED_CANDIDATES, rank_candidates
from speakerdb.enroll._watchlist import watch
from speakerdb.errors import AudioError, UsageError
from speakerdb.model._audio import AudioInput
from speakerdb.scoring import DEFAULT_COHORT_TOP_N, cosine
from speakerdb.storage._audit import PendingEntry

if TYPE_CHECKING:
    from speakerdb.model._countermeasure import Countermeasure
    from speakerdb.model._embedder import EmbeddedAudio


__all__ = ["DecisionVerbs"]


class DecisionVerbs(FacadeBase):
    """The decision verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    # --- decisions ----------------------------------------------------------------------------
    # Every decision: accept iff score >= threshold, the score being the calibrated LLR where a
    # calibration applies, else the cosine (or AS-norm z-score); see _policy.

    def verify(
        self,
        name: str,
        audio: AudioInput,
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
        prior: float | None = None,
        far: float | None = None,
        options: DecisionOptions | None = None,
    ) -> Verification:
        """Is this recording the enrolled speaker ``name``? Scores the recording against the
        speaker's voiceprint (centroid). threshold / prior / far / options: see
        :meth:`verify_many`. Raises SpeakerNotFoundError, AudioError, ..."""
        options = options_of(options, threshold, norm=norm, prior=prior, far=far)
        result = self.verify_many(name, [audio], sample_rate=sample_rate, options=options)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def verify_many(
        self,
        name: str,
        audio: Sequence[AudioInput],
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        prior: float | None = None,
        far: float | None = None,
        spoof_model: str | os.PathLike[str] | None = None,
        options: DecisionOptions | None = None,
    ) -> list[Verification | AudioError]:
        """:meth:`verify` for several recordings; unusable ones come back as their error.

        threshold: overrides the threshold of the rule in use, on its scale (an LLR when
        calibrated, else a cosine or z-score). prior / far: decide at the Bayes threshold of
        target prior ``prior`` (unit costs), or at the LLR threshold reaching false-accept
        rate ``far`` on the calibration's trials, for this call. norm="asnorm" normalises
        scores against an impostor cohort: the other enrolled speakers' voiceprints, or the
        recordings ``cohort`` (see :meth:`evaluate`). spoof_model: a countermeasure
        checkpoint to run on every probe for this call instead of the database's
        (docs/spoofing.md); with either, each answer carries ``spoof`` and a detected attack is
        decision SPOOF_DETECTED, not accepted. options: all of threshold, prior, far, norm,
        cohort and cohort_size as one :class:`~speakerdb.decisions.DecisionOptions` (the CLI
        and the service pass them so), instead of those keywords.
        """
        options = options_of(
            options, threshold, norm=norm, prior=prior, far=far, cohort=cohort, size=cohort_size
        )
        key = options.normalization
        policy = self.decision_policy(options)
        identity = self._check_model()
        record, centroid = self.store.centroid(name)
        cm = self._database_countermeasure(spoof_model)
        embedded = self.model.embed(
            audio, sample_rate=sample_rate, head_samples=cm.input_samples if cm else 0
        )
        good = [e for e in embedded if e.vector is not None]
        cosines = [cosine(vector_of(e), centroid) for e in good]
        scores = cosines
        if key is not None and good:
            scores = self._cohorts.verification_scores(
                np.stack([vector_of(e) for e in good]),
                centroid,
                record.id,
                options.cohort,
                options.cohort_size,
            ).tolist()
        enrolled = Side(record.speech_seconds, record.utterances, record.bandwidth_hz)
        decided = iter(
            policy.decide(cosines, scores, [side_of(e) for e in good], [enrolled] * len(good))
        )
        out: list[Verification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(error_of(item))
                continue
            d = next(decided)
            out.append(
                Verification.of(
                    d,
                    speaker=record.name,
                    model=identity.label,
                    source=item.source,
                    normalization=key,
                )
            )
        if cm is not None:
            from speakerdb.enroll._spoof import screen

            out = screen(cm, audio, embedded, out, sample_rate)
        out = watch(self, policy if key is None else None, embedded, out, options)
        self.store.record_lookups(
            [
                PendingEntry("verify", speaker=record.name, **_decided(r, r.accepted))
                if isinstance(r, Verification)
                else PendingEntry("verify", speaker=record.name, **_failed(r))
                for r in out
            ]
        )
        return out

    def compare(
        self,
        a: AudioInput,
        b: AudioInput,
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
        prior: float | None = None,
        far: float | None = None,
        options: DecisionOptions | None = None,
    ) -> Comparison:
        """Same speaker? File against file, with the one rule (see :meth:`verify_many`)."""
        options = options_of(options, threshold, norm=norm, prior=prior, far=far)
        result = self.compare_batch([(a, b)], sample_rate=sample_rate, options=options)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def compare_batch(
        self,
        pairs: Sequence[tuple[AudioInput, AudioInput]],
        threshold: float | None = None,
        *,
        batch_size: int = 32,
        sample_rate: int | None = None,
        progress: Progress | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        prior: float | None = None,
        far: float | None = None,
        options: DecisionOptions | None = None,
    ) -> list[Comparison | AudioError]:
        """Compare many pairs, embedding each distinct file once. A pair with an unusable file
        comes back as that file's AudioError. batch_size: windows per encoder call (at least
        the default of the model). threshold / prior / far: see :meth:`verify_many`; norm /
        cohort / cohort_size: see :meth:`evaluate`. Each pair's calibration sees both
        files' own quality (the features are symmetric). options: see :meth:`verify_many`."""
        options = options_of(
            options, threshold, norm=norm, prior=prior, far=far, cohort=cohort, size=cohort_size
        )
        key = options.normalization
        policy = self.decision_policy(options)
        identity = self.identity
        # compare needs no database; where there is one with a countermeasure, both files of
        # every pair are screened.
        cm = self._database_countermeasure() if self._store is not None else None
        items = [x for pair in pairs for x in pair]
        position, embedded = self._embed_distinct(
            items, batch_size, sample_rate, progress, cm.input_samples if cm else 0
        )
        rows: list[tuple[int, int] | AudioError] = []
        for k in range(len(pairs)):
            ia, ib = position[2 * k], position[2 * k + 1]
            failed = next((embedded[i] for i in (ia, ib) if embedded[i].vector is None), None)
            rows.append(error_of(failed) if failed is not None else (ia, ib))
        good = [r for r in rows if isinstance(r, tuple)]
        scores = self._cohorts.pair_scores(embedded, good, key, options.cohort, options.cohort_size)
        decided = iter(
            policy.decide(
                [raw for raw, _ in scores],
                [used for _, used in scores],
                [side_of(embedded[b]) for _, b in good],
                [side_of(embedded[a]) for a, _ in good],
            )
        )
        out: list[Comparison | AudioError] = []
        for row in rows:
            if isinstance(row, AudioError):
                out.append(row)
                continue
            d = next(decided)
            a, b = embedded[row[0]].source, embedded[row[1]].source
            out.append(Comparison.of(d, model=identity.label, a=a, b=b, normalization=key))
        if cm is not None and out:
            out = self._screen_pairs(cm, items, position, embedded, out, sample_rate)
        if key is not None and options.cohort is None and self._store is not None:
            # Scored against the enrolled speakers (the AS-norm cohort): a database lookup.
            self.store.record_lookups(
                [
                    PendingEntry("compare", **_decided(r, r.same_speaker))
                    if isinstance(r, Comparison)
                    else PendingEntry("compare", **_failed(r))
                    for r in out
                ]
            )
        return out

    @staticmethod
    def _screen_pairs(
        cm: Countermeasure,
        items: Sequence[AudioInput],
        position: list[int],
        embedded: list[EmbeddedAudio],
        results: list[Comparison | AudioError],
        sample_rate: int | None,
    ) -> list[Comparison | AudioError]:
        """``results`` with the countermeasure's answers on both files of each compared
        pair (each distinct file scored once); an attack on either side is SPOOF_DETECTED."""
        import dataclasses

        from speakerdb.enroll._spoof import SPOOF_DETECTED, spoof_answer, spoof_scores

        distinct: list[AudioInput] = [items[0]] * len(embedded)
        for i, p in enumerate(position):
            distinct[p] = items[i]
        wanted = [i for i, e in enumerate(embedded) if e.vector is not None]
        scored = dict(
            zip(wanted, spoof_scores(cm, distinct, embedded, wanted, sample_rate), strict=True)
        )
        out = list(results)
        for k, result in enumerate(results):
            if isinstance(result, AudioError):
                continue
            sides = [scored[position[2 * k]], scored[position[2 * k + 1]]]
            failed = next((s.error for s in sides if isinstance(s.error, AudioError)), None)
            if failed is not None:
                out[k] = failed
                continue
            detected = any(s.detected is True for s in sides)
            out[k] = dataclasses.replace(
                result,
                spoof={"a": spoof_answer(cm, sides[0]), "b": spoof_answer(cm, sides[1])},
                same_speaker=result.same_speaker and not detected,
                decision=SPOOF_DETECTED if detected else None,
            )
        return out

    def identify(
        self,
        audio: AudioInput,
        top_k: int = 5,
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
        prior: float | None = None,
        far: float | None = None,
        options: DecisionOptions | None = None,
    ) -> Identification:
        """Who is speaking? Open set: ``best`` is None when no enrolled speaker reaches the
        threshold (an unknown voice); ``matches`` are the top-k candidates, best first."""
        options = options_of(options, threshold, norm=norm, prior=prior, far=far)
        result = self.identify_many([audio], top_k, sample_rate=sample_rate, options=options)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def identify_many(
        self,
        audio: Sequence[AudioInput],
        top_k: int = 5,
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        prior: float | None = None,
        far: float | None = None,
        spoof_model: str | os.PathLike[str] | None = None,
        options: DecisionOptions | None = None,
    ) -> list[Identification | AudioError]:
        """:meth:`identify` for several recordings, searched in one batch.

        With a calibration the nearest :data:`RERANKED_CANDIDATES` voiceprints by cosine are
        given LLRs (each from its own enrollment quality) and ranked and decided on them; if
        any of them cannot be calibrated (enrolled before schema 0004), that identification
        ranks and decides on the score rule and says so. With norm="asnorm" the candidates
        are re-scored with AS-norm first. threshold / prior / far / spoof_model: see
        :meth:`verify_many`; a detected attack identifies nobody (decision SPOOF_DETECTED).
        """
        if top_k < 1:
            raise UsageError(f"top-k must be at least 1, not {top_k}")
        options = options_of(
            options, threshold, norm=norm, prior=prior, far=far, cohort=cohort, size=cohort_size
        )
        key = options.normalization
        policy = self.decision_policy(options)
        identity = self._check_model()
        cm = self._database_countermeasure(spoof_model)
        embedded = self.model.embed(
            audio, sample_rate=sample_rate, head_samples=cm.input_samples if cm else 0
        )
        good = [vector_of(e) for e in embedded if e.vector is not None]
        probes = np.stack(good) if good else None
        # Normalised or calibrated scores may order candidates differently from the cosine:
        # fetch more than k and rank them all.
        plain = key is None and policy.calibration is None
        fetch = top_k if plain else max(top_k, RERANKED_CANDIDATES)
        found = self.store.search(probes, fetch, identity) if probes is not None else []
        cosines = [{c.id: c.score for c in candidates} for candidates in found]
        if key is not None and probes is not None:
            found = self._cohorts.rescore_candidates(
                probes, found, options.cohort, options.cohort_size
            )
        results = iter(zip(found, cosines, strict=True))
        out: list[Identification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(error_of(item))
                continue
            candidates, raw = next(results)
            decisions, rule = rank_candidates(policy, candidates, raw, side_of(item))
            matches = [Match(c.name, d.score, d.cosine, d.llr) for c, d in decisions[:top_k]]
            best = decisions[0][0].name if decisions and decisions[0][1].accepted else None
            out.append(
                Identification.of(
                    rule, best, matches, model=identity.label, source=item.source, normalization=key
                )
            )
        if cm is not None:
            from speakerdb.enroll._spoof import screen

            out = screen(cm, audio, embedded, out, sample_rate)
        out = watch(self, policy if key is None else None, embedded, out, options)
        self.store.record_lookups([_identified(r) for r in out])
        return out


def _decided(result: Verification | Comparison, accepted: bool) -> dict[str, Any]:
    # A countermeasure's or a watchlist's catch is recorded as such, not as a rejection.
    caught = result.decision is not None and not accepted
    verdict = "accept" if accepted else "reject"
    return {
        "decision": result.decision.lower() if caught and result.decision else verdict,
        "score": result.score,
        "detail": {"normalization": result.normalization} if result.normalization else None,
    }


def _failed(error: AudioError) -> dict[str, Any]:
    return {"decision": "error", "detail": {"error": error.code}}


def _identified(result: Identification | AudioError) -> PendingEntry:
    """An identification's entry: the speaker found (none for an unknown voice: the
    candidates it was not are not recorded) and the best score."""
    if isinstance(result, AudioError):
        return PendingEntry("identify", **_failed(result))
    top = result.matches[0].score if result.matches else None
    if result.decision is not None and result.best is None:
        return PendingEntry("identify", decision=result.decision.lower(), score=top)
    if result.best is not None:
        return PendingEntry("identify", speaker=result.best, decision="identified", score=top)
    return PendingEntry("identify", decision="unknown", score=top)
