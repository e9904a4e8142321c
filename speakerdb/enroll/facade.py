"""SpeakerDB: the one object applications use -- enroll, verify, compare, identify, manage.

It composes the model layer (recordings -> voiceprints) and the store (voiceprints in SQL and
a vector index) and decides everything with the one cosine-threshold rule of
:mod:`speakerdb.scoring`. Every result carries the score, the threshold used and the model.
The threshold, unless given, is the database's calibrated one if set, else the model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb.enroll.evaluation import EvaluationReport, ScoredTrial, summarise
from speakerdb.enroll.lists import ManifestEntry, Trial
from speakerdb.enroll.reports import EnrollmentReport, InputReport
from speakerdb.errors import AudioError, SpeakerNotFoundError, UsageError
from speakerdb.identity import ModelIdentity
from speakerdb.model.audio import AudioInput, source_label
from speakerdb.model.registry import (
    DEFAULT_MODEL,
    NORMALIZATIONS,
    default_threshold,
    model_identity,
)
from speakerdb.results import Comparison, Identification, Match, Verification
from speakerdb.scoring import (
    DEFAULT_COHORT_TOP_N,
    accept,
    as_norm,
    cosine,
    cosine_scores,
    validate_threshold,
)
from speakerdb.storage.records import (
    ENROLL_MODES,
    Candidate,
    EnrollRequest,
    EnrollResult,
    NewUtterance,
    SpeakerRecord,
    UtteranceRecord,
)
from speakerdb.storage.store import EnrollmentStore, validated_name

if TYPE_CHECKING:
    import torch

    from speakerdb.model.embedder import EmbeddedAudio, Embedder
    from speakerdb.storage.check import CheckReport
    from speakerdb.storage.index_cache import IndexStatus

__all__ = ["RECOMMENDED_SPEECH_SECONDS", "SpeakerDB"]

RECOMMENDED_SPEECH_SECONDS = 8.0
"""Net speech (s) below which an enrollment gets a warning: GE2E voiceprints made from less
are noticeably less reliable (more false rejections of the genuine speaker)."""

_MANIFEST_COMMIT_SPEAKERS = 32  # speakers per transaction during a manifest enrollment
_MANIFEST_COMMIT_SECONDS = 2.0  # ... or this long since the last commit, whichever first

Progress = Callable[[int], None]


class SpeakerDB:
    """A speaker enrollment database with its embedding model.

    Open with :meth:`open`; use as a context manager or call :meth:`close`. The model loads
    on first use (listing or deleting speakers never loads torch).
    """

    def __init__(
        self,
        store: EnrollmentStore,
        model: str | Embedder | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.store = store
        self._device = device
        self._embedder: Embedder | None = None
        self._cohorts: dict[tuple[str, ...], npt.NDArray[np.float32]] = {}
        if model is None or isinstance(model, str):
            held = store.model()
            self._model_name = model or (held.name if held is not None else DEFAULT_MODEL)
        else:
            self._embedder = model
            self._model_name = model.identity.name

    @classmethod
    def open(
        cls,
        url: Any = None,
        model: str | Embedder | None = None,
        device: str | torch.device | None = None,
    ) -> SpeakerDB:
        """Open (or create) a database. url: SQLAlchemy URL or SQLite path (None:
        ``$SPEAKERDB_URL``, else ``$XDG_DATA_HOME/speakerdb/speakerdb.sqlite``). model: a
        name (default: the database's model, else "ge2e") or a loaded Embedder. device: for
        the model (None: CUDA if available)."""
        index_device = None if device is None else str(device)
        return cls(EnrollmentStore.open(url, device=index_device), model, device)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SpeakerDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- model and threshold --------------------------------------------------------------------

    @property
    def model(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            from speakerdb.model.registry import load_model

            self._embedder = load_model(self._model_name, self._device)
        return self._embedder

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

    def default_threshold(self, normalization: str | None = None) -> float:
        """The threshold used when none is given, for raw cosine scores (None) or a score
        normalisation ("asnorm"): the database's calibrated one, else the model's."""
        norm = _norm(normalization)
        own, _ = self.store.threshold(norm)
        return own if own is not None else default_threshold(self._model_name, norm)

    def _threshold(self, threshold: float | None, normalization: str | None = None) -> float:
        if threshold is None:
            return self.default_threshold(normalization)
        if _norm(normalization) is None:
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
        _check_mode(mode)
        inputs = _as_list(audio)
        if not inputs:
            raise UsageError(f"no recordings given to enroll {name!r}")
        identity = self._check_model()
        existing = {s.name for s in self.store.speakers()} if mode == "skip" else set()
        report = EnrollmentReport(speaker=name, mode=mode)
        if name in existing:
            report.inputs = [InputReport(source_label(a), "skipped") for a in inputs]
            return self._finish_report(report, name, [])
        known = self.store.existing_hashes([name])[name] if mode == "append" else set()
        results = self.model.embed(
            inputs,
            sample_rate=sample_rate,
            progress=progress,
            skip=lambda _i, sha: sha in known,
        )
        accepted = _accept(report, results, known)
        if accepted:
            request = EnrollRequest(name, accepted, mode, metadata)  # type: ignore[arg-type]
            result = self.store.enroll(request, identity)
            _apply_result(report, result)
        return self._finish_report(report, name, [u.embedding for u in accepted])

    def enroll_manifest(
        self,
        entries: Sequence[ManifestEntry],
        mode: str = "append",
        progress: Progress | None = None,
        batch_size: int | None = None,
    ) -> list[EnrollmentReport]:
        """Enroll many speakers from manifest entries in one pass (batched embedding).

        Speakers are committed as soon as all their recordings are embedded, several per
        transaction, so an interrupted run keeps what it finished and a rerun skips the
        already-enrolled audio (decoded to recognise it, not re-embedded). Reports come in the
        order each speaker first appears.
        """
        _check_mode(mode)
        identity = self._check_model()
        by_speaker: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            by_speaker.setdefault(validated_name(entry.speaker), []).append(index)
        speaker_of = {i: name for name, indexes in by_speaker.items() for i in indexes}
        existing = {s.name: s for s in self.store.speakers()}
        known = self.store.existing_hashes(list(by_speaker)) if mode == "append" else {}
        reports = {name: EnrollmentReport(speaker=name, mode=mode) for name in by_speaker}
        results: dict[str, dict[int, EmbeddedAudio]] = {n: {} for n in by_speaker}
        ready: list[str] = []
        last_commit = time.monotonic()

        def skip(index: int, sha: str) -> bool:
            name = speaker_of[index]
            if mode == "skip" and name in existing:
                return True
            return sha in known.get(name, set())

        def commit(names: list[str]) -> None:
            requests: list[EnrollRequest] = []
            accepted_of: dict[str, list[NewUtterance]] = {}
            for name in names:
                report = reports[name]
                ordered = [results[name][i] for i in by_speaker[name]]
                accepted_of[name] = _accept(report, ordered, known.get(name, set()))
                if mode == "skip" and name in existing:
                    report.inputs = [
                        InputReport(r.source, "skipped", sha256=r.sha256) for r in ordered
                    ]
                elif accepted_of[name]:
                    requests.append(EnrollRequest(name, accepted_of[name], mode, None))  # type: ignore[arg-type]
            if requests:
                for result in self.store.enroll_many(requests, identity):
                    _apply_result(reports[result.name], result)
            for name in names:
                report = reports[name]
                if not report.changed and name in existing:
                    report.utterances = existing[name].utterances
                    report.total_speech_seconds = existing[name].speech_seconds
                new = [u.embedding for u in accepted_of[name]]
                self._finish_report(report, name, new, lookup=False)

        paths = [entry.path for entry in entries]
        for index, result in self.model.iter_embed(
            paths, skip=skip, **({"batch_size": batch_size} if batch_size else {})
        ):
            name = speaker_of[index]
            results[name][index] = result
            if progress is not None:
                progress(sum(len(r) for r in results.values()))
            if len(results[name]) == len(by_speaker[name]):
                ready.append(name)
            if ready and (
                len(ready) >= _MANIFEST_COMMIT_SPEAKERS
                or time.monotonic() - last_commit >= _MANIFEST_COMMIT_SECONDS
            ):
                commit(ready)
                ready = []
                last_commit = time.monotonic()
        if ready:
            commit(ready)
        return [reports[name] for name in by_speaker]

    def _finish_report(
        self,
        report: EnrollmentReport,
        name: str,
        new_embeddings: list[npt.NDArray[np.float32]],
        lookup: bool = True,
    ) -> EnrollmentReport:
        """Fill the speaker's totals and the warnings (inconsistent recordings, little speech)."""
        threshold = self.threshold
        if lookup:
            try:
                record = self.store.speaker(name)
                report.utterances = record.utterances
                report.total_speech_seconds = record.speech_seconds
            except SpeakerNotFoundError:  # nothing was accepted for a new speaker
                report.utterances, report.total_speech_seconds = 0, 0.0
        accepted = [i for i in report.inputs if i.status == "accepted"]
        if lookup and report.changed and report.utterances >= 2:
            embeddings = self.store.utterance_embeddings(name)
            hashes = [u.sha256 for u in self.store.utterances(name)]
        else:  # a manifest run: judge the recordings accepted in this run among themselves
            embeddings = np.stack(new_embeddings) if len(new_embeddings) >= 2 else None
            hashes = [i.sha256 or "" for i in accepted]
        if report.changed and embeddings is not None and len(embeddings) >= 2:
            consistency = _leave_one_out(embeddings)
            by_hash = dict(zip(hashes, consistency, strict=True))
            for item in accepted:
                score = by_hash.get(item.sha256 or "")
                if score is None:
                    continue
                item.consistency = score
                if score < threshold:
                    report.warnings.append(
                        f"{item.source} scores {score:.3f} against the other recordings of "
                        f"{name!r} (threshold {threshold:.3f}): it may be another speaker"
                    )
        if report.utterances and report.total_speech_seconds < RECOMMENDED_SPEECH_SECONDS:
            report.warnings.append(
                f"{name!r} has {report.total_speech_seconds:.1f} s of speech; at least "
                f"{RECOMMENDED_SPEECH_SECONDS:.0f} s is recommended for reliable verification"
            )
        return report

    # --- decisions ----------------------------------------------------------------------------

    def verify(
        self,
        name: str,
        audio: AudioInput,
        threshold: float | None = None,
        sample_rate: int | None = None,
    ) -> Verification:
        """Is this recording the enrolled speaker ``name``? Scores the recording against the
        speaker's voiceprint (centroid). Raises SpeakerNotFoundError, AudioError, ..."""
        result = self.verify_many(name, [audio], threshold, sample_rate)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def verify_many(
        self,
        name: str,
        audio: Sequence[AudioInput],
        threshold: float | None = None,
        sample_rate: int | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
    ) -> list[Verification | AudioError]:
        """:meth:`verify` for several recordings; unusable ones come back as their error.

        norm="asnorm" normalises scores against an impostor cohort: the other enrolled
        speakers' voiceprints, or the recordings ``cohort`` (see :meth:`evaluate`).
        """
        norm = _norm(norm)
        used = self._threshold(threshold, norm)
        identity = self._check_model()
        record, centroid = self.store.centroid(name)
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [e for e in embedded if e.vector is not None]
        normalised: dict[int, float] = {}
        if norm is not None and good:
            vectors = np.stack([e.vector for e in good])  # type: ignore[misc]
            bank = self._cohort(cohort, exclude=record.id)
            raw = cosine_scores(vectors, centroid[None, :])[:, 0]
            enroll_side = np.repeat(cosine_scores(centroid[None, :], bank), len(good), axis=0)
            values = as_norm(raw, enroll_side, cosine_scores(vectors, bank), cohort_size)
            normalised = {id(e): float(v) for e, v in zip(good, values, strict=True)}
        out: list[Verification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                assert item.error is not None
                out.append(item.error)
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
        norm = _norm(norm)
        used = self._threshold(threshold, norm)
        identity = self.identity
        position, embedded = self._embed_distinct(
            [x for pair in pairs for x in pair], batch_size, sample_rate, progress
        )
        rows: list[tuple[int, int] | AudioError] = []
        for k in range(len(pairs)):
            ia, ib = position[2 * k], position[2 * k + 1]
            failed = next((embedded[i] for i in (ia, ib) if embedded[i].vector is None), None)
            rows.append(failed.error if failed is not None and failed.error else (ia, ib))
        scores = self._pair_scores(
            embedded, [r for r in rows if isinstance(r, tuple)], norm, cohort, cohort_size
        )
        out: list[Comparison | AudioError] = []
        next_score = iter(scores)
        for row in rows:
            if isinstance(row, AudioError):
                out.append(row)
                continue
            raw, score = next(next_score)
            ea, eb = embedded[row[0]], embedded[row[1]]
            out.append(
                Comparison(
                    score,
                    used,
                    accept(score, used),
                    identity.label,
                    ea.source,
                    eb.source,
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
        from speakerdb.model.embedder import DEFAULT_BATCH_SIZE

        return self.model.embed_distinct(
            items,
            batch_size=max(batch_size, DEFAULT_BATCH_SIZE),
            sample_rate=sample_rate,
            progress=progress,
        )

    def _pair_scores(
        self,
        embedded: list[EmbeddedAudio],
        pairs: list[tuple[int, int]],
        norm: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
    ) -> list[tuple[float, float]]:
        """(raw cosine, score used for the decision) of each pair of embedded positions."""
        raw = [cosine(embedded[a].vector, embedded[b].vector) for a, b in pairs]  # type: ignore[arg-type]
        if norm is None or not pairs:
            return [(r, r) for r in raw]
        used = sorted({i for pair in pairs for i in pair})
        position = {i: k for k, i in enumerate(used)}
        bank = self._cohort(cohort)
        against = cosine_scores(np.stack([embedded[i].vector for i in used]), bank)  # type: ignore[misc]
        a_side = against[[position[a] for a, _ in pairs]]
        b_side = against[[position[b] for _, b in pairs]]
        values = as_norm(np.array(raw), a_side, b_side, cohort_size)
        return [(r, float(v)) for r, v in zip(raw, values, strict=True)]

    def identify(
        self,
        audio: AudioInput,
        top_k: int = 5,
        threshold: float | None = None,
        sample_rate: int | None = None,
        norm: str | None = None,
    ) -> Identification:
        """Who is speaking? Open set: ``best`` is None when no enrolled speaker reaches the
        threshold (an unknown voice); ``matches`` are the top-k candidates, best first."""
        result = self.identify_many([audio], top_k, threshold, sample_rate, norm=norm)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def identify_many(
        self,
        audio: Sequence[AudioInput],
        top_k: int = 5,
        threshold: float | None = None,
        sample_rate: int | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
    ) -> list[Identification | AudioError]:
        """:meth:`identify` for several recordings, searched in one batch. With
        norm="asnorm" the candidates are re-scored with AS-norm and re-ranked."""
        if top_k < 1:
            raise UsageError(f"top-k must be at least 1, not {top_k}")
        norm = _norm(norm)
        used = self._threshold(threshold, norm)
        identity = self._check_model()
        embedded = self.model.embed(audio, sample_rate=sample_rate)
        good = [e for e in embedded if e.vector is not None]
        probes = np.stack([e.vector for e in good]) if good else None  # type: ignore[misc]
        # With normalisation the raw order may change: fetch a few more candidates.
        fetch = top_k if norm is None else max(top_k, 10)
        found = self.store.search(probes, fetch, identity) if probes is not None else []
        if norm is not None and probes is not None:
            found = self._normalise_candidates(probes, found, cohort, cohort_size)
        candidates = iter(found)
        out: list[Identification | AudioError] = []
        for item in embedded:
            if item.vector is None:
                assert item.error is not None
                out.append(item.error)
                continue
            matches = [Match(c.name, c.score) for c in next(candidates)][:top_k]
            best = matches[0].name if matches and accept(matches[0].score, used) else None
            out.append(Identification(best, matches, used, identity.label, item.source, norm))
        return out

    def _normalise_candidates(
        self,
        probes: npt.NDArray[np.float32],
        found: list[list[Candidate]],
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
    ) -> list[list[Candidate]]:
        bank_all = self._cohort(cohort)
        out: list[list[Candidate]] = []
        for probe, candidates in zip(probes, found, strict=True):
            rescored: list[Candidate] = []
            for c in candidates:
                centroid = self.store.centroid(c.name)[1]
                # The candidate itself is no impostor of itself.
                bank = bank_all if cohort is not None else _without(bank_all, centroid)
                value = as_norm(
                    [c.score],
                    cosine_scores(centroid[None, :], bank),
                    cosine_scores(probe[None, :], bank),
                    cohort_size,
                )[0]
                rescored.append(Candidate(c.id, c.name, float(value)))
            out.append(sorted(rescored, key=lambda c: -c.score))
        return out

    def _cohort(
        self, cohort: Sequence[AudioInput] | None, exclude: int | None = None
    ) -> npt.NDArray[np.float32]:
        """Impostor voiceprints for score normalisation: the given recordings (embedded once
        per SpeakerDB), else every enrolled speaker's voiceprint except ``exclude``."""
        if cohort is not None:
            key = tuple(str(c) for c in cohort)
            if key not in self._cohorts:
                embedded = self.model.embed(list(cohort))
                vectors = [e.vector for e in embedded if e.vector is not None]
                if not vectors:
                    raise UsageError("no usable recording in the cohort")
                self._cohorts[key] = np.stack(vectors)
            return self._cohorts[key]
        ids, vectors = self.store.index_vectors()
        if exclude is not None:
            keep = ids != exclude
            ids, vectors = ids[keep], vectors[keep]
        if len(vectors) > _MAX_DATABASE_COHORT:
            # A fixed sample: the top-N statistics need impostors, not all of them.
            rows = np.random.default_rng(0).choice(
                len(vectors), _MAX_DATABASE_COHORT, replace=False
            )
            vectors = vectors[np.sort(rows)]
        return vectors

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self,
        trials: Sequence[Trial],
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
        norm = _norm(norm)
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
        scores = self._pair_scores(embedded, [sides[k] for k in kept], norm, cohort, cohort_size)
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
        report = self.evaluate(trials, far, norm, cohort, cohort_size, progress)
        threshold = report.threshold_at_far if target == "far" else report.threshold
        how = f"{far:.2%} false accepts" if target == "far" else "the equal error rate"
        note = (
            f"threshold at {how} on {report.target_trials} target / {report.nontarget_trials} "
            f"non-target trials (EER {report.eer:.2%})"
        )
        self.store.set_threshold(threshold, note, _norm(norm))
        return threshold, report

    def reset_calibration(self, norm: str | None = None) -> None:
        """Forget this database's calibrated threshold: the model's default applies again."""
        self.store.set_threshold(None, None, _norm(norm))

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
        from speakerdb.storage.check import check_store

        return check_store(self.store)

    def rebuild_index(self, kind: str | None = None) -> IndexStatus:
        """Rebuild the vector index from SQL (``kind``: "auto", "flat" or "ivf")."""
        return self.store.rebuild_index(kind)


# --- helpers ------------------------------------------------------------------------------------


_MAX_DATABASE_COHORT = 5000


def _without(
    bank: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``bank`` without the rows equal to ``vector``."""
    return bank[~np.all(bank == vector, axis=1)]


def _norm(normalization: str | None) -> str | None:
    if normalization in (None, "none"):
        return None
    if normalization not in NORMALIZATIONS:
        raise UsageError(
            f"normalisation must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}"
        )
    return normalization


def _check_mode(mode: str) -> None:
    if mode not in ENROLL_MODES:
        raise UsageError(f"mode must be one of {', '.join(ENROLL_MODES)}, not {mode!r}")


def _as_list(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    if isinstance(audio, str | np.ndarray) or hasattr(audio, "__fspath__"):
        return [audio]  # type: ignore[list-item]
    return list(audio)  # type: ignore[arg-type]


def _accept(
    report: EnrollmentReport, results: Iterable[EmbeddedAudio], known: set[str]
) -> list[NewUtterance]:
    """Sort embedded inputs into the report; return the utterances to store."""
    accepted: list[NewUtterance] = []
    seen = set(known)
    report.inputs = []
    for r in results:
        if r.error is not None:
            report.inputs.append(
                InputReport(r.source, "rejected", reason=r.error.code, message=r.error.reason)
            )
            continue
        item = InputReport(
            r.source,
            "duplicate",
            sha256=r.sha256,
            duration=r.duration,
            speech_seconds=r.speech_seconds,
        )
        report.inputs.append(item)
        if r.skipped or r.sha256 in seen or r.vector is None:
            continue
        seen.add(r.sha256 or "")
        item.status = "accepted"
        accepted.append(
            NewUtterance(
                r.vector,
                r.sha256 or "",
                r.source,
                float(r.duration or 0),
                float(r.speech_seconds or 0),
            )
        )
    return accepted


def _apply_result(report: EnrollmentReport, result: EnrollResult) -> None:
    report.changed = bool(result.added) or result.removed > 0
    report.created = result.created
    added = set(result.added)
    for item in report.inputs:
        if item.status == "accepted" and item.sha256 not in added:
            item.status = "duplicate"  # enrolled meanwhile by someone else
    report.net_speech_seconds = sum(
        i.speech_seconds or 0.0 for i in report.inputs if i.status == "accepted"
    )
    if result.speaker is not None:
        report.utterances = result.speaker.utterances
        report.total_speech_seconds = result.speaker.speech_seconds


def _leave_one_out(embeddings: npt.NDArray[np.float32]) -> list[float]:
    """Cosine of each embedding with the mean of all the others: (n, D) -> n scores."""
    total = embeddings.astype(np.float64).sum(axis=0)
    return [
        float(cosine_scores(embeddings[i], total - embeddings[i])) for i in range(len(embeddings))
    ]
