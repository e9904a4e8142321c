"""SpeakerDB: the one object applications use -- enroll, verify, compare, identify, manage.

It composes the model layer (recordings -> voiceprints) and the store (voiceprints in SQL and
a vector index) and decides everything with the one cosine-threshold rule of
:mod:`speakerdb.scoring`. Every result carries the score, the threshold used and the model.
The threshold, unless given, is the database's calibrated one if set, else the model's.
Enrollment bookkeeping lives in :mod:`._enrollment`, AS-norm cohorts in :mod:`._cohort`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from speakerdb._identity import ModelIdentity
from speakerdb._results import Comparison, Identification, Match, Verification
from speakerdb.enroll._cohort import Cohorts, normalization
from speakerdb.enroll._enrollment import (
    ManifestEnrollment,
    apply_result,
    finish_report,
    set_totals,
    sort_inputs,
)
from speakerdb.enroll._evaluation import EvaluationReport, ScoredTrial, summarise
from speakerdb.enroll._lists import ManifestEntry, Trial
from speakerdb.enroll._reports import EnrollmentReport, InputReport, ManifestSummary
from speakerdb.errors import AudioError, DatabaseNotFoundError, UsageError
from speakerdb.model._audio import AudioInput, source_label
from speakerdb.model._registry import DEFAULT_MODEL, default_threshold, model_identity
from speakerdb.scoring import DEFAULT_COHORT_TOP_N, accept, cosine, validate_threshold
from speakerdb.storage._records import (
    ENROLL_MODES,
    CompactResult,
    EnrollMode,
    EnrollRequest,
    SpeakerRecord,
    UtteranceRecord,
)
from speakerdb.storage._store import EnrollmentStore, validated_name

if TYPE_CHECKING:
    import torch

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
        model: str | Embedder | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self._store = store
        self._device = device
        self._embedder: Embedder | None = None
        # Threads of a server may ask for the model at once: it is loaded only once.
        self._model_lock = threading.Lock()
        if model is None or isinstance(model, str):
            held = store.model() if store is not None else None
            self._model_name = model or (held.name if held is not None else DEFAULT_MODEL)
        else:
            self._embedder = model
            self._model_name = model.identity.name
        self._cohorts = Cohorts(store, lambda: self.model, lambda: self.identity)

    @classmethod
    def open(
        cls,
        url: Any = None,
        model: str | Embedder | None = None,
        device: str | torch.device | None = None,
        *,
        read_only: bool = False,
        missing_ok: bool = False,
        background_index: bool = False,
    ) -> SpeakerDB:
        """Open (or create) a database. url: SQLAlchemy URL or SQLite path (None:
        ``$SPEAKERDB_URL``, else ``$XDG_DATA_HOME/speakerdb/speakerdb.sqlite``). model: a
        name (default: the database's model, else "ge2e") or a loaded Embedder. device: for
        the model (None: CUDA if available).

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

    # --- model and threshold --------------------------------------------------------------------

    @property
    def model(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            from speakerdb.model._registry import load_model

            with self._model_lock:
                if self._embedder is None:
                    self._embedder = load_model(self._model_name, self._device)
        return self._embedder

    @property
    def model_loaded(self) -> bool:
        """Whether the embedding model is in memory (it loads on first use)."""
        return self._embedder is not None

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity (known without loading the model)."""
        if self._embedder is not None:
            return self._embedder.identity
        return model_identity(self._model_name)

    @property
    def threshold(self) -> float:
        """The default decision threshold here: the database's calibrated one, else the
        model's."""
        return self.default_threshold(None)

    def default_threshold(self, norm: str | None = None) -> float:
        """The threshold used when none is given, for raw cosine scores (None) or a score
        normalisation ("asnorm"): the database's calibrated one, else the model's."""
        key = normalization(norm)
        own, _ = self._store.threshold(key) if self._store is not None else (None, None)
        return own if own is not None else default_threshold(self._model_name, key)

    def _threshold(self, threshold: float | None, norm: str | None = None) -> float:
        if threshold is None:
            return self.default_threshold(norm)
        if normalization(norm) is None:
            return validate_threshold(threshold)
        value = float(threshold)
        if not np.isfinite(value):
            raise UsageError(f"threshold must be a finite number, not {threshold!r}")
        return value

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
    ) -> EnrollmentReport:
        """Enroll recordings of one speaker.

        audio: a path or array, or a list of them (arrays need ``sample_rate``). mode:
        "append" (add; create if new), "overwrite" (replace the speaker's recordings), "skip"
        (leave an existing speaker untouched). Unusable recordings are rejected in the report
        without stopping the others; already-enrolled audio is reported as a duplicate. If
        nothing is accepted the database is not changed at all.

        Raises UsageError (bad name/mode/metadata), ModelMismatchError, StoreError.
        """
        name = validated_name(name)
        checked_mode = _check_mode(mode)
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
        result = self.store.enroll(EnrollRequest(name, accepted, checked_mode, metadata), identity)
        apply_result(report, result)
        return finish_report(report, result, self.threshold)

    def enroll_manifest(
        self,
        entries: Sequence[ManifestEntry],
        *,
        mode: str = "append",
        progress: Progress | None = None,
        batch_size: int | None = None,
    ) -> ManifestSummary:
        """Enroll many speakers from manifest entries in one pass (batched embedding).

        Speakers are committed as soon as all their recordings are embedded, several per
        transaction, so an interrupted run keeps what it finished and a rerun skips the
        already-enrolled audio (decoded to recognise it, not re-embedded). Reports come in the
        order each speaker first appears.
        """
        run = ManifestEnrollment(
            self.store, self._check_model(), entries, _check_mode(mode), self.threshold
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

    def verify(
        self,
        name: str,
        audio: AudioInput,
        threshold: float | None = None,
        *,
        sample_rate: int | None = None,
        norm: str | None = None,
    ) -> Verification:
        """Is this recording the enrolled speaker ``name``? Scores the recording against the
        speaker's voiceprint (centroid). Raises SpeakerNotFoundError, AudioError, ..."""
        result = self.verify_many(name, [audio], threshold, sample_rate=sample_rate, norm=norm)[0]
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
    ) -> list[Verification | AudioError]:
        """:meth:`verify` for several recordings; unusable ones come back as their error.

        norm="asnorm" normalises scores against an impostor cohort: the other enrolled
        speakers' voiceprints, or the recordings ``cohort`` (see :meth:`evaluate`).
        """
        norm = normalization(norm)
        used = self._threshold(threshold, norm)
        identity = self._check_model()
        record, centroid = self.store.centroid(name)
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [e for e in embedded if e.vector is not None]
        normalised: dict[int, float] = {}
        if norm is not None and good:
            values = self._cohorts.verification_scores(
                np.stack([cast(np.ndarray, e.vector) for e in good]),
                centroid,
                record.id,
                cohort,
                cohort_size,
            )
            normalised = {id(e): float(v) for e, v in zip(good, values, strict=True)}
        out: list[Verification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(_error_of(item))
                continue
            raw_score = cosine(item.vector, centroid)
            score = normalised.get(id(item), raw_score)
            out.append(
                Verification(
                    score=score,
                    threshold=used,
                    accepted=accept(score, used),
                    speaker=record.name,
                    model=identity.label,
                    source=item.source,
                    normalization=norm,
                    cosine=raw_score,
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
    ) -> Comparison:
        """Same speaker? File against file, with the one cosine rule."""
        result = self.compare_batch([(a, b)], threshold, sample_rate=sample_rate, norm=norm)[0]
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
    ) -> list[Comparison | AudioError]:
        """Compare many pairs, embedding each distinct file once. A pair with an unusable file
        comes back as that file's AudioError. batch_size: windows per encoder call (at least
        the default of the model). norm / cohort / cohort_size: see :meth:`evaluate`."""
        norm = normalization(norm)
        used = self._threshold(threshold, norm)
        identity = self.identity
        position, embedded = self._embed_distinct(
            [x for pair in pairs for x in pair], batch_size, sample_rate, progress
        )
        rows: list[tuple[int, int] | AudioError] = []
        for k in range(len(pairs)):
            ia, ib = position[2 * k], position[2 * k + 1]
            failed = next((embedded[i] for i in (ia, ib) if embedded[i].vector is None), None)
            rows.append(_error_of(failed) if failed is not None else (ia, ib))
        scores = self._cohorts.pair_scores(
            embedded, [r for r in rows if isinstance(r, tuple)], norm, cohort, cohort_size
        )
        out: list[Comparison | AudioError] = []
        next_score = iter(scores)
        for row in rows:
            if isinstance(row, AudioError):
                out.append(row)
                continue
            raw, score = next(next_score)
            out.append(
                Comparison(
                    score,
                    used,
                    accept(score, used),
                    identity.label,
                    embedded[row[0]].source,
                    embedded[row[1]].source,
                    norm,
                    raw,
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
    ) -> Identification:
        """Who is speaking? Open set: ``best`` is None when no enrolled speaker reaches the
        threshold (an unknown voice); ``matches`` are the top-k candidates, best first."""
        result = self.identify_many([audio], top_k, threshold, sample_rate=sample_rate, norm=norm)[
            0
        ]
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
    ) -> list[Identification | AudioError]:
        """:meth:`identify` for several recordings, searched in one batch. With
        norm="asnorm" the candidates are re-scored with AS-norm and re-ranked."""
        if top_k < 1:
            raise UsageError(f"top-k must be at least 1, not {top_k}")
        norm = normalization(norm)
        used = self._threshold(threshold, norm)
        identity = self._check_model()
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [cast(np.ndarray, e.vector) for e in embedded if e.vector is not None]
        probes = np.stack(good) if good else None
        # With normalisation the raw order may change: fetch a few more candidates.
        fetch = top_k if norm is None else max(top_k, 10)
        found = self.store.search(probes, fetch, identity) if probes is not None else []
        if norm is not None and probes is not None:
            found = self._cohorts.rescore_candidates(probes, found, cohort, cohort_size)
        candidates = iter(found)
        out: list[Identification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                out.append(_error_of(item))
                continue
            matches = [Match(c.name, c.score) for c in next(candidates)][:top_k]
            best = matches[0].name if matches and accept(matches[0].score, used) else None
            out.append(Identification(best, matches, used, identity.label, item.source, norm))
        return out

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self,
        trials: Sequence[Trial],
        *,
        far: float = 0.01,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
    ) -> EvaluationReport:
        """Error rates on labelled trials (see :class:`EvaluationReport`).

        Each distinct file is embedded once; trials with an unusable file are skipped and the
        file is listed with its reason. far: the false-accept rate whose threshold is reported.
        norm="asnorm": AS-norm scores against ``cohort`` recordings (impostors, none of the
        trials' speakers), else against the enrolled speakers' voiceprints; cohort_size: the
        top-N most similar cohort voiceprints used per side.
        """
        if not 0.0 <= far < 1.0:
            raise UsageError(f"--far must be in [0, 1), not {far}")
        if any(t.label is None for t in trials):
            raise UsageError("every trial needs a label (1 same speaker, 0 different)")
        norm = normalization(norm)
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
        usable = [trials[k] for k in kept]
        scores = self._cohorts.pair_scores(
            embedded, [sides[k] for k in kept], norm, cohort, cohort_size
        )
        scored = [
            ScoredTrial(int(t.label or 0), score, str(t.a), str(t.b))
            for t, (_, score) in zip(usable, scores, strict=True)
        ]
        return summarise(
            scored,
            skipped=len(trials) - len(usable),
            failed=failed,
            far=far,
            threshold_in_use=self.default_threshold(norm),
            model=self.identity.label,
            normalization=norm,
        )

    def calibrate(
        self,
        trials: Sequence[Trial],
        *,
        far: float = 0.01,
        target: str = "far",
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
    ) -> tuple[float, EvaluationReport]:
        """Choose this database's threshold on the user's own labelled trials and store it:
        verify, compare and identify use it from then on. target: "far" (the lowest threshold
        with at most ``far`` false accepts) or "eer" (the threshold at the equal error rate).
        Returns the threshold and the evaluation it came from."""
        if target not in ("far", "eer"):
            raise UsageError(f"calibration target must be 'far' or 'eer', not {target!r}")
        report = self.evaluate(
            trials, far=far, norm=norm, cohort=cohort, cohort_size=cohort_size, progress=progress
        )
        threshold = report.threshold_at_far if target == "far" else report.threshold
        how = f"{far:.2%} false accepts" if target == "far" else "the equal error rate"
        note = (
            f"threshold at {how} on {report.target_trials} target / {report.nontarget_trials} "
            f"non-target trials (EER {report.eer:.2%})"
        )
        self.store.set_threshold(threshold, note, normalization(norm))
        return threshold, report

    def reset_calibration(self, norm: str | None = None) -> None:
        """Forget this database's calibrated threshold: the model's default applies again."""
        self.store.set_threshold(None, None, normalization(norm))

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


def _error_of(item: EmbeddedAudio) -> AudioError:
    if item.error is None:  # an input without a vector always carries its error
        raise ValueError(f"{item.source} has neither a voiceprint nor an error")
    return item.error
