"""SpeakerDB: the one object applications use -- enroll, verify, compare, identify, manage.

It composes the model layer (recordings -> voiceprints) and the store (voiceprints in SQL and
a vector index) and decides everything with one rule: accept iff score >= threshold, the
score being the calibrated log-likelihood ratio where a calibration applies, else the cosine
(or its AS-norm z-score). Which calibration and threshold apply is :mod:`._policy`'s
business. Every result carries the raw cosine, the LLR, the score used, the threshold, the
rule and the model. Enrollment bookkeeping lives in :mod:`._enrollment`, AS-norm cohorts in
:mod:`._cohort`, evaluation in :mod:`._evaluation`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from speakerdb._calibration import DEFAULT_OPERATING_POINT
from speakerdb._identity import ModelIdentity
from speakerdb._results import Comparison, DecisionRule, Identification, Match, Verification
from speakerdb.enroll._cohort import Cohorts, normalization
from speakerdb.enroll._enrollment import (
    ManifestEnrollment,
    apply_result,
    finish_report,
    set_totals,
    sort_inputs,
)
from speakerdb.enroll._evaluation import (
    CalibrationResult,
    EvaluationReport,
    ScoredTrials,
    trials_digest,
)
from speakerdb.enroll._guard import AppendGuard, check_overwrite, refusal
from speakerdb.enroll._lists import ManifestEntry, Trial, distinct_trials
from speakerdb.enroll._policy import (
    RERANKED_CANDIDATES,
    DecisionPolicy,
    Side,
    bundled_for,
    rank_candidates,
    resolve_policy,
)
from speakerdb.enroll._reembed import ReembedReport
from speakerdb.enroll._reports import EnrollmentReport, InputReport, ManifestSummary
from speakerdb.errors import AudioError, DatabaseNotFoundError, ModelNotFoundError, UsageError
from speakerdb.model._audio import AudioInput, source_label
from speakerdb.model._registry import ModelSpec, identity_threshold, model_identity, resolve_model
from speakerdb.scoring import DEFAULT_COHORT_TOP_N, cosine
from speakerdb.storage._metadata import validated_metadata
from speakerdb.storage._records import (
    ENROLL_MODES,
    CalibrationSetting,
    CompactResult,
    EnrollMode,
    EnrollRequest,
    SpeakerRecord,
    UtteranceRecord,
)
from speakerdb.storage._store import EnrollmentStore, validated_name

if TYPE_CHECKING:
    import torch

    from speakerdb.diarize import Diarization
    from speakerdb.model._embedder import EmbeddedAudio, Embedder
    from speakerdb.storage._check import CheckReport
    from speakerdb.storage._index_cache import IndexStatus
    from speakerdb.storage._keys import ApiKeyRecord, NewApiKey

__all__ = ["Progress", "SpeakerDB"]

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while recordings are embedded."""


class SpeakerDB:
    """A speaker enrollment database with its embedding model.

    Open with :meth:`open`; use as a context manager or call :meth:`close`. The model loads
    on first use (listing or deleting speakers never loads torch).
    """

    def __init__(
        self,
        store: EnrollmentStore | None,
        model: str | os.PathLike[str] | Embedder | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self._store = store
        self._device = device
        self._embedder: Embedder | None = None
        # Threads of a server may ask for the model at once: it is loaded only once.
        self._model_lock = threading.Lock()
        self._model_arg: str | os.PathLike[str] | None = None
        if model is None or isinstance(model, str | os.PathLike):
            # Resolved when first needed: listing speakers must not need the model file.
            self._model_arg = model or None
        else:
            self._embedder = model
        self._cohorts = Cohorts(store, lambda: self.model, lambda: self.identity)

    @classmethod
    def open(
        cls,
        url: Any = None,
        model: str | os.PathLike[str] | Embedder | None = None,
        device: str | torch.device | None = None,
        *,
        read_only: bool = False,
        missing_ok: bool = False,
        background_index: bool = False,
    ) -> SpeakerDB:
        """Open (or create) a database. url: SQLAlchemy URL or SQLite path (None:
        ``$SPEAKERDB_URL``, else ``$XDG_DATA_HOME/speakerdb/speakerdb.sqlite``). model: a
        built-in name, the path of a model file or folder (see :func:`speakerdb.load_model`)
        or a loaded Embedder; default: the database's own model (loaded from the path it
        records), else ``$SPEAKERDB_MODEL``, else "ge2e". A path to the database's model
        moved elsewhere (same sha256) is accepted and remembered. device: for the model
        (None: CUDA if available).

        read_only: never create or change the database (reading commands); a database that
        does not exist raises DatabaseNotFoundError, unless ``missing_ok``: then this
        SpeakerDB has no database and only compares recordings (compare, evaluate) with the
        model's threshold.

        background_index: for a long-running SpeakerDB (a server): index maintenance runs in
        a background thread, so no query waits for it (see :meth:`EnrollmentStore.open`).

        A SpeakerDB may be shared by threads: the store serialises what must be, and the
        model is loaded once."""
        index_device = None if device is None else str(device)
        try:
            store = EnrollmentStore.open(
                url, device=index_device, read_only=read_only, background_index=background_index
            )
        except DatabaseNotFoundError:
            if not (read_only and missing_ok):
                raise
            store = None
        return cls(store, model, device)

    @property
    def store(self) -> EnrollmentStore:
        """The database. Raises DatabaseNotFoundError when opened without one."""
        if self._store is None:
            raise DatabaseNotFoundError("no database: this needs an existing database (--db)")
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> SpeakerDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- model, thresholds and calibration ------------------------------------------------------

    def _held_model(self) -> ModelIdentity | None:
        return self._store.model() if self._store is not None else None

    def _model_spec(self) -> ModelSpec:
        """Which model to load: the one asked for, else the database's own (from the path it
        records), else ``$SPEAKERDB_MODEL`` or "ge2e". Raises ModelNotFoundError when the
        database's model file is no longer where it was loaded from."""
        held = self._held_model() if self._model_arg is None else None
        if held is None:
            return resolve_model(self._model_arg)
        if held.source is None:
            return resolve_model(held.name)
        try:
            return resolve_model(held.source)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"this database's model {held.label} ({held.family}, sha256 "
                f"{held.weights_sha256}) was last loaded from {held.source}, which is missing: "
                "pass --model PATH (or model=PATH) of the same file where it is now"
            ) from None

    @property
    def model(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            from speakerdb.model._registry import load_model

            with self._model_lock:
                if self._embedder is None:
                    embedder = load_model(self._model_spec(), self._device)
                    if self._model_arg is None and self._store is not None:
                        # The file at the recorded path may have been replaced since.
                        self._store.check_model(embedder.identity)
                    self._remember_source(embedder.identity)
                    self._embedder = embedder
        return self._embedder

    def _remember_source(self, identity: ModelIdentity) -> None:
        """The database's model, loaded from a new place: remember that place (not in
        read-only mode; another model is refused where vectors are compared)."""
        if self._store is not None and identity.source is not None:
            self._store.remember_model_source(identity)

    @property
    def model_loaded(self) -> bool:
        """Whether the embedding model is in memory (it loads on first use)."""
        return self._embedder is not None

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity: known without loading a built-in model or the database's
        own; a model file asked for is loaded to know it."""
        if self._embedder is not None:
            return self._embedder.identity
        if self._model_arg is None:
            held = self._held_model()
            if held is not None and held.source is not None:
                return held  # a built-in model's threshold is this release's, not the row's
        spec = self._model_spec()
        if spec.path is None:
            return model_identity(spec.name)
        return self.model.identity

    @property
    def threshold(self) -> float:
        """The threshold on cosine scores here: the database's own (``calibrate --rule
        score``), else the model's. The cosine rule uses it where no calibration applies;
        enrollment warnings always do."""
        return self.default_threshold(None)

    def default_threshold(self, norm: str | None = None) -> float:
        """The threshold on the score scale of raw cosine scores (None) or of a score
        normalisation ("asnorm"): the database's own, else the model's."""
        key = normalization(norm)
        own, _ = self._store.threshold(key) if self._store is not None else (None, None)
        return own if own is not None else identity_threshold(self.identity, key)

    def decision_policy(
        self,
        norm: str | None = None,
        *,
        threshold: float | None = None,
        prior: float | None = None,
        far: float | None = None,
    ) -> DecisionPolicy:
        """How this database decides for a normalisation, with a call's overrides: the
        calibration in use (if any) and the rules on LLRs and on the score scale (see
        :func:`speakerdb.enroll._policy.resolve_policy`). Without a database: as a new one
        (the bundled calibration)."""
        key = normalization(norm)
        if self._store is None:
            default, setting = "bundled", None
        else:
            default, setting = self._store.calibration_setting(key)
            if key is None and default == "auto":
                from speakerdb.enroll._self_calibration import refit_if_due

                setting = refit_if_due(self, default, setting)
        return resolve_policy(
            self.identity,
            key,
            identity_threshold(self.identity, key),
            default,
            setting,
            threshold=threshold,
            prior=prior,
            far=far,
        )

    def _check_model(self) -> ModelIdentity:
        identity = self.identity
        self.store.check_model(identity)
        return identity

    # --- enrollment ---------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        audio: AudioInput | Sequence[AudioInput],
        *,
        mode: str = "append",
        metadata: dict[str, Any] | None = None,
        sample_rate: int | None = None,
        progress: Progress | None = None,
        force: bool = False,
    ) -> EnrollmentReport:
        """Enroll recordings of one speaker.

        audio: a path or array, or a list of them (arrays need ``sample_rate``). mode:
        "append" (add; create if new), "overwrite" (replace the speaker's recordings; needs
        ``force``), "skip" (leave an existing speaker untouched). Unusable recordings are
        rejected in the report without stopping the others; already-enrolled audio is
        reported as a duplicate. If nothing is accepted the database is not changed at all.

        Appending to an enrolled speaker: every new recording is first verified against the
        speaker's voiceprint as it was before this call, with the database's decision rule;
        if any is rejected, nothing is stored and EnrollmentRefusedError is raised (its
        ``report`` says which; see :mod:`speakerdb.enroll._guard`). ``force``: the
        administrator's override -- overwrite, and append without that check.

        Raises UsageError (bad name/mode/metadata, overwrite without force),
        EnrollmentRefusedError, ModelMismatchError, StoreError.
        """
        name = validated_name(name)
        checked_mode = _check_mode(mode)
        validated_metadata(metadata)
        check_overwrite(checked_mode, force, repr(name))
        inputs = _as_list(audio)
        if not inputs:
            raise UsageError(f"no recordings given to enroll {name!r}")
        identity = self._check_model()
        report = EnrollmentReport(speaker=name, mode=checked_mode)
        if checked_mode == "skip":
            existing = self.store.speaker_records([name]).get(name)
            if existing is not None:
                report.inputs = [InputReport(source_label(a), "skipped") for a in inputs]
                set_totals(report, existing)
                return finish_report(report, None, self.threshold)
        known = self.store.existing_hashes([name])[name] if checked_mode == "append" else set()
        results = self.model.embed(
            inputs,
            sample_rate=sample_rate,
            progress=progress,
            skip=lambda _i, sha: sha in known,
        )
        accepted = sort_inputs(report, results, known)
        if not accepted:
            set_totals(report, self.store.speaker_records([name]).get(name))
            return finish_report(report, None, self.threshold)
        guard = None if force else AppendGuard(self.decision_policy(None))
        result = self.store.enroll(
            EnrollRequest(name, accepted, checked_mode, metadata), identity, guard
        )
        if result.refused and guard is not None:
            guard.mark_refused(report)
            set_totals(report, result.speaker)
            raise refusal(report)
        apply_result(report, result)
        return finish_report(report, result, self.threshold)

    def enroll_manifest(
        self,
        entries: Sequence[ManifestEntry],
        *,
        mode: str = "append",
        progress: Progress | None = None,
        batch_size: int | None = None,
        force: bool = False,
    ) -> ManifestSummary:
        """Enroll many speakers from manifest entries in one pass (batched embedding).

        Speakers are committed as soon as all their recordings are embedded, several per
        transaction, so an interrupted run keeps what it finished and a rerun skips the
        already-enrolled audio (decoded to recognise it, not re-embedded). Reports come in the
        order each speaker first appears. Appends to enrolled speakers are checked as in
        :meth:`enroll`: a speaker whose new recordings do not match gets nothing of this run
        (its report marks them "refused"), the others go ahead. ``force``: as in
        :meth:`enroll` (needed for mode overwrite).
        """
        checked_mode = _check_mode(mode)
        check_overwrite(checked_mode, force, "the manifest's speakers")
        guard = None if force else AppendGuard(self.decision_policy(None))
        run = ManifestEnrollment(
            self.store, self._check_model(), entries, checked_mode, self.threshold, guard
        )
        paths = [entry.path for entry in entries]
        stream = self.model.iter_embed(
            paths, skip=run.skip, **({"batch_size": batch_size} if batch_size else {})
        )
        for done, (index, result) in enumerate(stream, start=1):
            run.add(index, result)
            if progress is not None:
                progress(done, len(paths))
        run.flush()
        return ManifestSummary(files=len(entries), reports=run.ordered_reports())

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
    ) -> Verification:
        """Is this recording the enrolled speaker ``name``? Scores the recording against the
        speaker's voiceprint (centroid). threshold / prior / far: see :meth:`verify_many`.
        Raises SpeakerNotFoundError, AudioError, ..."""
        result = self.verify_many(
            name, [audio], threshold, sample_rate=sample_rate, norm=norm, prior=prior, far=far
        )[0]
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
    ) -> list[Verification | AudioError]:
        """:meth:`verify` for several recordings; unusable ones come back as their error.

        threshold: overrides the threshold of the rule in use, on its scale (an LLR when
        calibrated, else a cosine or z-score). prior / far: decide at the Bayes threshold of
        target prior ``prior`` (unit costs), or at the LLR threshold reaching false-accept
        rate ``far`` on the calibration's trials, for this call. norm="asnorm" normalises
        scores against an impostor cohort: the other enrolled speakers' voiceprints, or the
        recordings ``cohort`` (see :meth:`evaluate`).
        """
        key = normalization(norm)
        policy = self.decision_policy(key, threshold=threshold, prior=prior, far=far)
        identity = self._check_model()
        record, centroid = self.store.centroid(name)
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [e for e in embedded if e.vector is not None]
        cosines = [cosine(_vector(e), centroid) for e in good]
        scores = cosines
        if key is not None and good:
            scores = self._cohorts.verification_scores(
                np.stack([_vector(e) for e in good]), centroid, record.id, cohort, cohort_size
            ).tolist()
        enrolled = Side(record.speech_seconds, record.utterances, record.bandwidth_hz)
        decided = iter(
            policy.decide(cosines, scores, [_side(e) for e in good], [enrolled] * len(good))
        )
        out: list[Verification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(_error_of(item))
                continue
            d = next(decided)
            out.append(
                Verification(
                    score=d.score,
                    threshold=d.threshold,
                    accepted=d.accepted,
                    speaker=record.name,
                    model=identity.label,
                    source=item.source,
                    normalization=key,
                    cosine=d.cosine,
                    llr=d.llr,
                    decision_rule=d.rule,
                    calibration=d.calibration,
                )
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
    ) -> Comparison:
        """Same speaker? File against file, with the one rule (see :meth:`verify_many`)."""
        result = self.compare_batch(
            [(a, b)], threshold, sample_rate=sample_rate, norm=norm, prior=prior, far=far
        )[0]
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
    ) -> list[Comparison | AudioError]:
        """Compare many pairs, embedding each distinct file once. A pair with an unusable file
        comes back as that file's AudioError. batch_size: windows per encoder call (at least
        the default of the model). threshold / prior / far: see :meth:`verify_many`; norm /
        cohort / cohort_size: see :meth:`evaluate`. Each pair's calibration sees both
        files' own quality (the features are symmetric)."""
        key = normalization(norm)
        policy = self.decision_policy(key, threshold=threshold, prior=prior, far=far)
        identity = self.identity
        position, embedded = self._embed_distinct(
            [x for pair in pairs for x in pair], batch_size, sample_rate, progress
        )
        rows: list[tuple[int, int] | AudioError] = []
        for k in range(len(pairs)):
            ia, ib = position[2 * k], position[2 * k + 1]
            failed = next((embedded[i] for i in (ia, ib) if embedded[i].vector is None), None)
            rows.append(_error_of(failed) if failed is not None else (ia, ib))
        good = [r for r in rows if isinstance(r, tuple)]
        scores = self._cohorts.pair_scores(embedded, good, key, cohort, cohort_size)
        decided = iter(
            policy.decide(
                [raw for raw, _ in scores],
                [used for _, used in scores],
                [_side(embedded[b]) for _, b in good],
                [_side(embedded[a]) for a, _ in good],
            )
        )
        out: list[Comparison | AudioError] = []
        for row in rows:
            if isinstance(row, AudioError):
                out.append(row)
                continue
            d = next(decided)
            out.append(
                Comparison(
                    score=d.score,
                    threshold=d.threshold,
                    same_speaker=d.accepted,
                    model=identity.label,
                    a=embedded[row[0]].source,
                    b=embedded[row[1]].source,
                    normalization=key,
                    cosine=d.cosine,
                    llr=d.llr,
                    decision_rule=d.rule,
                    calibration=d.calibration,
                )
            )
        return out

    def _embed_distinct(
        self,
        items: Sequence[AudioInput],
        batch_size: int,
        sample_rate: int | None,
        progress: Progress | None,
    ) -> tuple[list[int], list[EmbeddedAudio]]:
        """:meth:`Embedder.embed_distinct` with at least the model's default batch size."""
        from speakerdb.model._embedder import DEFAULT_BATCH_SIZE

        return self.model.embed_distinct(
            items,
            batch_size=max(batch_size, DEFAULT_BATCH_SIZE),
            sample_rate=sample_rate,
            progress=progress,
        )

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
    ) -> Identification:
        """Who is speaking? Open set: ``best`` is None when no enrolled speaker reaches the
        threshold (an unknown voice); ``matches`` are the top-k candidates, best first."""
        result = self.identify_many(
            [audio], top_k, threshold, sample_rate=sample_rate, norm=norm, prior=prior, far=far
        )[0]
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
    ) -> list[Identification | AudioError]:
        """:meth:`identify` for several recordings, searched in one batch.

        With a calibration the nearest :data:`RERANKED_CANDIDATES` voiceprints by cosine are
        given LLRs (each from its own enrollment quality) and ranked and decided on them; if
        any of them cannot be calibrated (enrolled before schema 0004), that identification
        ranks and decides on the score rule and says so. With norm="asnorm" the candidates
        are re-scored with AS-norm first. threshold / prior / far: see :meth:`verify_many`.
        """
        if top_k < 1:
            raise UsageError(f"top-k must be at least 1, not {top_k}")
        key = normalization(norm)
        policy = self.decision_policy(key, threshold=threshold, prior=prior, far=far)
        identity = self._check_model()
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [_vector(e) for e in embedded if e.vector is not None]
        probes = np.stack(good) if good else None
        # Normalised or calibrated scores may order candidates differently from the cosine:
        # fetch more than k and rank them all.
        plain = key is None and policy.calibration is None
        fetch = top_k if plain else max(top_k, RERANKED_CANDIDATES)
        found = self.store.search(probes, fetch, identity) if probes is not None else []
        cosines = [{c.id: c.score for c in candidates} for candidates in found]
        if key is not None and probes is not None:
            found = self._cohorts.rescore_candidates(probes, found, cohort, cohort_size)
        results = iter(zip(found, cosines, strict=True))
        out: list[Identification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(_error_of(item))
                continue
            candidates, raw = next(results)
            decisions, rule = rank_candidates(policy, candidates, raw, _side(item))
            matches = [Match(c.name, d.score, d.cosine, d.llr) for c, d in decisions[:top_k]]
            best = decisions[0][0].name if decisions and decisions[0][1].accepted else None
            out.append(
                Identification(
                    best,
                    matches,
                    rule.threshold,
                    identity.label,
                    item.source,
                    key,
                    rule,
                    rule.calibration if rule.score == "llr" else None,
                )
            )
        return out

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

    # --- evaluation and calibration -----------------------------------------------------------

    def evaluate(
        self,
        trials: Sequence[Trial],
        *,
        far: float | None = None,
        prior: float | None = None,
        threshold: float | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
    ) -> EvaluationReport:
        """Error rates on labelled trials (see :class:`EvaluationReport`), and the decisions
        verify/compare/identify would take on them: the rule in use (with ``prior`` /
        ``far`` / ``threshold`` as in :meth:`verify_many`), its FAR and FRR and, when it is
        calibrated, Cllr, minCllr and actual / minimum DCF at its operating point.

        Each distinct file is embedded once; trials with an unusable file are skipped and the
        file is listed with its reason. far: also the false-accept rate whose score threshold
        on these trials is reported (default 1 %). norm="asnorm": AS-norm scores against
        ``cohort`` recordings (impostors, none of the trials' speakers), else against the
        enrolled speakers' voiceprints; cohort_size: the top-N most similar cohort
        voiceprints used per side.
        """
        key = normalization(norm)
        report_far = _report_far(far)
        policy = self.decision_policy(key, threshold=threshold, prior=prior, far=far)
        scored = self._score_trials(trials, key, cohort, cohort_size, progress)
        return scored.summary(policy, report_far, self.identity.label, key)

    def _score_trials(
        self,
        trials: Sequence[Trial],
        norm: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
        progress: Progress | None,
    ) -> ScoredTrials:
        """Embed the trials' files (each once) and score the usable distinct trials (a trial
        and its mirror, or a repeated line, are scored once: see distinct_trials)."""
        if any(t.label is None for t in trials):
            raise UsageError("every trial needs a label (1 same speaker, 0 different)")
        trials, counts = distinct_trials(trials)
        position, embedded = self._embed_distinct(
            [x for t in trials for x in (t.a, t.b)], 0, None, progress
        )
        failed: dict[str, tuple[str, str]] = {}
        for e in embedded:
            if e.error is not None:
                failed[e.source] = (e.error.code, e.error.reason)
        sides = [(position[2 * k], position[2 * k + 1]) for k in range(len(trials))]
        kept = [
            k
            for k, (ia, ib) in enumerate(sides)
            if embedded[ia].vector is not None and embedded[ib].vector is not None
        ]
        scores = self._cohorts.pair_scores(
            embedded, [sides[k] for k in kept], norm, cohort, cohort_size
        )
        return ScoredTrials(
            trials=[trials[k] for k in kept],
            cosines=[raw for raw, _ in scores],
            scores=[used for _, used in scores],
            probes=[_side(embedded[sides[k][1]]) for k in kept],
            enrolls=[_side(embedded[sides[k][0]]) for k in kept],
            skipped=len(trials) - len(kept),
            failed=failed,
            counts=counts,
        )

    def calibrate(
        self,
        trials: Sequence[Trial],
        *,
        prior: float | None = None,
        far: float | None = None,
        rule: str = "llr",
        target: str = "far",
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
        trials_sha256: str | None = None,
    ) -> CalibrationResult:
        """Calibrate this database on the user's own labelled trials and store the result:
        verify, compare and identify decide with it from then on.

        rule "llr" (default): fit a calibration of the scores (cosine, or AS-norm z-score
        with norm="asnorm") and the quality measures of both files to LLRs (prior-weighted
        logistic regression at p_fit = ``prior``, default 0.01; see
        :func:`speakerdb._calibration.fit_calibration`) and store it with the operating point
        (``prior``, or the target false-accept rate ``far`` looked up in the calibration's
        table; default p_target 0.01) and what it was fitted on (counts, date,
        ``trials_sha256``: the trial list's sha256, by default that of its lines). Needs at
        least :data:`MIN_TARGET_TRIALS` same-speaker and :data:`MIN_NONTARGET_TRIALS`
        different-speaker trials. rule "score": store a threshold on the score scale (the
        old way): the lowest with at most ``far`` (default 1 %) false accepts (target
        "far") or the one at the equal error rate (target "eer").

        Returns the stored rule and the evaluation of the trials with it (in-sample).
        Raises UsageError for too few trials or bad options.
        """
        if rule not in ("llr", "score"):
            raise UsageError(f"calibration rule must be 'llr' or 'score', not {rule!r}")
        key = normalization(norm)
        if rule == "score":
            return self._calibrate_threshold(
                trials, far, target, key, cohort, cohort_size, progress
            )
        if target != "far":
            raise UsageError("--target applies to --rule score only")
        if prior is not None and far is not None:
            raise UsageError("give a prior or a target false-accept rate, not both")
        scored = self._score_trials(trials, key, cohort, cohort_size, progress)
        identity = self.identity
        calibration, used = scored.fit(
            identity,
            p_fit=_prior(prior),
            score=key or "cosine",
            trials_sha256=trials_sha256 or trials_digest(trials),
        )
        setting = CalibrationSetting(
            normalization=key or "none",
            kind="llr",
            threshold=self.store.threshold(key)[0],  # still decides what cannot be calibrated
            source="database",
            calibration=calibration.to_dict(),
            p_target=None if far is not None else _prior(prior),
            c_miss=None if far is not None else 1.0,
            c_fa=None if far is not None else 1.0,
            target_far=far,
            trials_sha256=calibration.fit.trials_sha256,
            target_trials=calibration.fit.target_trials,
            nontarget_trials=calibration.fit.nontarget_trials,
            note=f"fitted on {used} distinct trials of {len(scored.trials) + scored.skipped}",
        )
        policy = resolve_policy(
            identity, key, identity_threshold(identity, key), setting=setting
        )  # checks the operating point before anything is stored
        # A calibration belongs to a model: a database without one adopts it now.
        self.store.adopt_model(identity)
        self.store.set_calibration(setting)
        report = scored.summary(policy, _report_far(far), identity.label, key)
        return CalibrationResult("llr", policy.rule, report, calibration)

    def _calibrate_threshold(
        self,
        trials: Sequence[Trial],
        far: float | None,
        target: str,
        key: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
        progress: Progress | None,
    ) -> CalibrationResult:
        if target not in ("far", "eer"):
            raise UsageError(f"calibration target must be 'far' or 'eer', not {target!r}")
        report_far = _report_far(far)
        scored = self._score_trials(trials, key, cohort, cohort_size, progress)
        report = scored.summary(self.decision_policy(key), report_far, self.identity.label, key)
        threshold = report.threshold_at_far if target == "far" else report.threshold
        how = f"{report_far:.2%} false accepts" if target == "far" else "the equal error rate"
        note = (
            f"threshold at {how} on {report.target_trials} target / {report.nontarget_trials} "
            f"non-target trials (EER {report.eer:.2%})"
        )
        self.store.adopt_model(self.identity)
        self.store.set_threshold(threshold, note, key)
        rule = DecisionRule(key or "cosine", threshold, "database")
        return CalibrationResult("threshold", rule, report, None)

    def use_bundled_calibration(
        self, norm: str | None = None, *, prior: float | None = None, far: float | None = None
    ) -> DecisionRule:
        """Decide with the model's bundled calibration (at p_target ``prior`` or false-accept
        rate ``far``; default p_target 0.01): how a database created before schema 0004 opts
        in. Returns the rule now in use. Raises UsageError when the model has none, or for
        AS-norm scores (the bundled calibrations map raw cosines)."""
        key = normalization(norm)
        if key is not None:
            raise UsageError(
                "the bundled calibration maps cosine scores; for AS-norm scores fit one on "
                "your trials (speakerdb calibrate TRIALS --norm asnorm)"
            )
        if bundled_for(self.identity.key) is None:
            raise UsageError(
                f"model {self.identity.label} has no bundled calibration: fit one with "
                "`speakerdb calibrate TRIALS`"
            )
        return self._store_operating_point(
            CalibrationSetting(
                "none", "llr", source="bundled", threshold=self.store.threshold(None)[0]
            ),
            prior,
            far,
        )

    def set_operating_point(
        self, norm: str | None = None, *, prior: float | None = None, far: float | None = None
    ) -> DecisionRule:
        """Move the operating point of the calibration in use (bundled or the database's own)
        to p_target ``prior`` (unit costs) or false-accept rate ``far``; stored. Returns the
        rule now in use. Raises UsageError when the database decides without a calibration
        (opt in with :meth:`use_bundled_calibration` or :meth:`calibrate`)."""
        key = normalization(norm)
        if (prior is None) == (far is None):
            raise UsageError("give a prior or a target false-accept rate (one of them)")
        default, setting = self.store.calibration_setting(key)
        if setting is None and default in ("bundled", "auto") and key is None:
            setting = CalibrationSetting("none", "llr", source="bundled")
        if setting is None or setting.kind != "llr":
            scale = key or "cosine"
            raise UsageError(
                f"this database decides on {scale} scores without a calibration: opt in with "
                "`speakerdb calibrate --bundled` or fit one with `speakerdb calibrate TRIALS`"
            )
        return self._store_operating_point(setting, prior, far)

    def _store_operating_point(
        self, setting: CalibrationSetting, prior: float | None, far: float | None
    ) -> DecisionRule:
        if prior is not None and far is not None:
            raise UsageError("give a prior or a target false-accept rate, not both")
        p_target = None if far is not None else _prior(prior)
        changed = dataclasses.replace(
            setting,
            p_target=p_target,
            c_miss=None if p_target is None else 1.0,
            c_fa=None if p_target is None else 1.0,
            target_far=far,
            note=setting.note if setting.source != "bundled" else "bundled calibration",
        )
        key = None if setting.normalization == "none" else setting.normalization
        policy = resolve_policy(
            self.identity, key, identity_threshold(self.identity, key), setting=changed
        )
        auto = self.store.calibration_setting(key)[0] == "auto"
        self.store.set_calibration(changed)
        if auto and changed.source == "self":  # moving its operating point keeps auto mode
            self.set_auto_calibration(True)
        return policy.rule

    def reset_calibration(self, norm: str | None = None) -> DecisionRule:
        """Forget this database's calibration or threshold for a normalisation: the default
        applies again -- the bundled calibration for raw cosine scores (in databases created
        since schema 0004 or opted in; else the model's cosine threshold), the model's
        threshold for AS-norm scores. Returns the rule now in use."""
        key = normalization(norm)
        self.store.clear_calibration(key)
        if key is None and self.store.calibration_setting(None)[0] == "auto":
            self.set_auto_calibration(False)  # else the next decision would fit again
        return self.decision_policy(key).rule

    def calibrate_from_enrollments(
        self, *, prior: float | None = None, far: float | None = None
    ) -> CalibrationResult:
        """Self-calibrate: fit a calibration of raw cosine scores on this database's own
        enrollments and store it (source "self"; see
        :mod:`speakerdb.enroll._self_calibration`). Same-speaker trials: each recording of a
        speaker with two or more against the voiceprint of the others; different-speaker
        trials: recordings against other speakers' voiceprints; near-duplicates dropped, every
        speaker weighing the same, the fit shrunk toward the bundled calibration when the
        speakers are few. prior / far: the operating point (default p_target 0.01).

        Returns the rule now in use and the report on the enrollment trials (in-sample).
        Raises UsageError for a database with too few enrollments (the message says how many
        are needed), read-only, or bad options."""
        from speakerdb.enroll._self_calibration import calibrate_from_enrollments

        return calibrate_from_enrollments(self, prior=prior, far=far)

    def set_auto_calibration(self, on: bool = True) -> dict[str, Any]:
        """Auto mode on: the bundled calibration decides until the database has enough
        enrollments, then its self-calibration, re-fitted at the start of a decision when the
        enrollments changed enough (a fifth more or fewer speakers, or any deletion). Off:
        whatever is stored stays. Returns :meth:`calibration_info`. Raises UsageError
        (read-only)."""
        from speakerdb.enroll._self_calibration import set_auto

        set_auto(self, on)
        return self.calibration_info(None)

    def calibration_info(self, norm: str | None = None) -> dict[str, Any]:
        """What decides here for a normalisation, JSON-compatible: the rule in use, whose
        calibration (``calibration``: "bundled", "database" or None), the database's
        default, the stored setting (operating point, counts, trial list sha256, date) and
        the calibration's own fit summary."""
        key = normalization(norm)
        default, setting = (
            self.store.calibration_setting(key) if self._store is not None else ("bundled", None)
        )
        policy = self.decision_policy(key)
        stored = None
        if setting is not None:
            stored = {k: v for k, v in dataclasses.asdict(setting).items() if k != "calibration"}
        fit = None
        if policy.calibration is not None:
            fit = policy.calibration.to_dict()["fit"]
        own: dict[str, Any] | None = None
        if self._store is not None and key is None:
            from speakerdb.enroll._self_calibration import self_calibration_status

            own = self_calibration_status(self, *self.store.calibration_setting(None))
        return {
            "normalization": key,
            "decision_rule": policy.rule.to_dict(),
            "calibration": policy.rule.calibration,
            "default": default,
            "stored": stored,
            "fit": fit,
            "self_calibration": own,
            "model": self.identity.label,
        }

    # --- switching model ----------------------------------------------------------------------

    def reembed(
        self,
        model: str | os.PathLike[str] | Embedder | None,
        *,
        allow_missing: bool = False,
        drop_old: bool = False,
        progress: Progress | None = None,
        commit_every: int | None = None,
    ) -> ReembedReport:
        """Switch this database to another embedding model (a name, a path or an Embedder).

        Every enrolled recording is embedded again from the path it was enrolled from, after
        checking it is still the same audio; then ONE transaction switches the database:
        vectors, centroids and the model it records (its default threshold applies; the
        calibrations, fitted on the old model's scores, are reset). The old model's vectors
        stay until ``drop_old``, so switching back needs no re-embedding. Interrupted (even
        killed), it keeps the vectors it made and a rerun resumes; until the switch the
        database answers with its old model. Recordings gone, changed or unusable by the new
        model are listed in a report with status "blocked" and nothing switches, unless
        ``allow_missing``: then they are dropped, and speakers left without any recording
        are deleted (listed). ``model`` None with ``drop_old``: delete the vectors of other
        models. ``progress(done, total)``: after each committed batch of ``commit_every``
        recordings (default :data:`speakerdb.enroll._reembed.COMMIT_EVERY`).

        Raises UsageError (read-only, empty database), ModelError / ModelNotFoundError,
        StoreError.
        """
        from speakerdb.enroll._reembed import reembed_store

        new: Embedder | None = None
        if isinstance(model, str | os.PathLike):
            from speakerdb.model._registry import load_model

            new = load_model(resolve_model(model), self._device)
        elif model is not None:
            new = model
        report = reembed_store(
            self.store,
            lambda: self.model,
            new,
            allow_missing=allow_missing,
            drop_old=drop_old,
            progress=progress,
            **({"commit_every": commit_every} if commit_every else {}),
        )
        if new is not None and report.status in ("switched", "current"):
            with self._model_lock:
                self._embedder, self._model_arg = new, None
            report.decision_rule = self.decision_policy(None).rule.to_dict()
        return report

    # --- management ---------------------------------------------------------------------------

    def speakers(self) -> list[SpeakerRecord]:
        return self.store.speakers()

    def speaker(self, name: str) -> SpeakerRecord:
        return self.store.speaker(name)

    def utterances(self, name: str) -> list[UtteranceRecord]:
        return self.store.utterances(name)

    def rename(self, old: str, new: str) -> SpeakerRecord:
        return self.store.rename_speaker(old, new)

    def delete(self, name: str) -> SpeakerRecord:
        """Delete a speaker with every recording's voiceprint (from SQL and the index file)."""
        return self.store.delete_speaker(name)

    def set_metadata(self, name: str, metadata: dict[str, Any] | None) -> SpeakerRecord:
        return self.store.set_metadata(name, metadata)

    def check(self) -> CheckReport:
        """Verify the database's invariants and its index against SQL."""
        from speakerdb.storage._check import check_store

        return check_store(self.store)

    def rebuild_index(self, kind: str | None = None) -> IndexStatus:
        """Rebuild the vector index from SQL (``kind``: "auto", "flat" or "ivf")."""
        return self.store.rebuild_index(kind)

    # --- API keys of the HTTP service ---------------------------------------------------------

    def create_key(self, name: str, scopes: Sequence[str]) -> NewApiKey:
        """Create an API key for ``speakerdb serve``; its secret is in the result, and only
        there (the database keeps its sha256). scopes: verify, identify, enroll, admin (or
        read = verify + identify). Raises UsageError, AlreadyExistsError, StoreError."""
        from speakerdb.storage._keys import create_key

        self._writable("create an API key")
        return create_key(self.store.engine, self.store.location.display, name, scopes)

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every API key, without secrets."""
        from speakerdb.storage._keys import list_keys

        return list_keys(self.store.engine)

    def revoke_key(self, name: str) -> ApiKeyRecord:
        """Delete an API key: every server refuses it from its next request on. Raises
        NotFoundError."""
        from speakerdb.storage._keys import revoke_key

        self._writable("revoke an API key")
        return revoke_key(self.store.engine, self.store.location.display, name)

    def authenticate(self, secret: str) -> ApiKeyRecord | None:
        """The API key whose secret this is, or None (compared in constant time)."""
        from speakerdb.storage._keys import authenticate

        return authenticate(self.store.engine, secret)

    def has_api_keys(self) -> bool:
        """Whether any API key exists (a server without one stays on loopback)."""
        from speakerdb.storage._keys import any_keys

        return any_keys(self.store.engine)

    def api_keys_required(self) -> bool:
        """Whether a server on this database must require API keys: from the creation of
        the first key on, even after every key is revoked (until :meth:`allow_keyless`)."""
        from speakerdb.storage._keys import keys_required

        return keys_required(self.store.engine)

    def allow_keyless(self) -> None:
        """Let a server on a loopback address answer without keys again. Raises UsageError
        while any key exists."""
        from speakerdb.storage._keys import allow_keyless

        self._writable("allow keyless access")
        allow_keyless(self.store.engine, self.store.location.display)

    def _writable(self, what: str) -> None:
        if self.store.read_only:
            raise UsageError(f"cannot {what}: {self.store.location.display} was opened read-only")

    def compact(self) -> CompactResult:
        """Erase deleted voiceprints' bytes from the database files for good and shrink them
        (PostgreSQL: VACUUM FULL of the vector tables, which locks them while it runs;
        SQLite: VACUUM). Deleting a speaker removes its rows at once, but PostgreSQL keeps
        the old row versions in its table files until they are rewritten."""
        return self.store.compact()


# --- helpers ------------------------------------------------------------------------------------


def _check_mode(mode: str) -> EnrollMode:
    if mode not in ENROLL_MODES:
        raise UsageError(f"mode must be one of {', '.join(ENROLL_MODES)}, not {mode!r}")
    return cast(EnrollMode, mode)


def _as_list(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    if isinstance(audio, str | np.ndarray) or hasattr(audio, "__fspath__"):
        return [cast(AudioInput, audio)]
    return list(audio)


def _side(item: EmbeddedAudio) -> Side:
    """A recording's quality as one side of a trial."""
    return Side(item.speech_seconds, 1, item.bandwidth_hz)


def _vector(item: EmbeddedAudio) -> np.ndarray:
    if item.vector is None:  # callers pass embedded inputs only
        raise ValueError(f"{item.source} has no voiceprint")
    return item.vector


def _prior(prior: float | None) -> float:
    """The target prior of an operating point: the one given, else the default (0.01)."""
    return DEFAULT_OPERATING_POINT.p_target if prior is None else float(prior)


def _report_far(far: float | None) -> float:
    """The false-accept rate whose score threshold an evaluation reports (default 1 %)."""
    value = 0.01 if far is None else float(far)
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--far must be in [0, 1), not {far}")
    return value


def _error_of(item: EmbeddedAudio) -> AudioError:
    if item.error is None:  # an input without a vector always carries its error
        raise ValueError(f"{item.source} has neither a voiceprint nor an error")
    return item.error
