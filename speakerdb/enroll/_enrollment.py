"""Enrollment bookkeeping: sorting embedded inputs into a report, what the store did, the
warnings, and the commit rhythm of a manifest enrollment.

The report of a speaker whose voiceprint changed is built only from what the enrolling
transaction returned (:class:`~speakerdb.storage._records.EnrollResult`): a concurrent
append or delete between the commit and the report can neither break nor falsify it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.enroll._reports import (
    RECOMMENDED_SPEECH_SECONDS,
    EnrollmentReport,
    EnrollmentWarning,
    InputReport,
)
from speakerdb.scoring import cosine_scores
from speakerdb.storage._governance import expires_at_after
from speakerdb.storage._records import EnrollMode, EnrollRequest, EnrollResult, NewUtterance
from speakerdb.storage._schema import utcnow

if TYPE_CHECKING:
    from speakerdb._identity import ModelIdentity
    from speakerdb.enroll._guard import AppendGuard
    from speakerdb.enroll._lists import ManifestEntry
    from speakerdb.model._embedder import EmbeddedAudio
    from speakerdb.storage._records import SpeakerRecord
    from speakerdb.storage._store import EnrollmentStore

__all__ = ["ManifestEnrollment", "apply_result", "finish_report", "sort_inputs"]

MANIFEST_COMMIT_SPEAKERS = 32
"""Speakers per transaction during a manifest enrollment ..."""
MANIFEST_COMMIT_SECONDS = 2.0
"""... or this long since the last commit, whichever comes first: an interrupted run keeps
what it finished, and a commit never waits long for the next speaker."""


def sort_inputs(
    report: EnrollmentReport, results: Iterable[EmbeddedAudio], known: set[str]
) -> list[NewUtterance]:
    """Sort embedded inputs into ``report.inputs`` (rejected, duplicate, or accepted for
    now); return the utterances to store. ``known``: sha256 already enrolled for the
    speaker."""
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
            bandwidth_hz=r.bandwidth_hz,
        )
        report.inputs.append(item)
        if r.skipped or r.sha256 is None or r.sha256 in seen or r.vector is None:
            continue
        seen.add(r.sha256)
        item.status = "accepted"
        accepted.append(
            NewUtterance(
                r.vector,
                r.sha256,
                r.source,
                float(r.duration or 0.0),
                float(r.speech_seconds or 0.0),
                r.bandwidth_hz,
            )
        )
    return accepted


def mark_skipped(report: EnrollmentReport, results: Iterable[EmbeddedAudio]) -> None:
    """Mode "skip" and the speaker exists: every input is reported as skipped."""
    report.inputs = [InputReport(r.source, "skipped", sha256=r.sha256) for r in results]


def apply_result(report: EnrollmentReport, result: EnrollResult) -> None:
    """Record in ``report`` what the store did. Inputs accepted here but found already
    enrolled by the transaction (someone enrolled them meanwhile) become duplicates."""
    report.changed = bool(result.added) or result.removed > 0
    report.created = result.created
    added = set(result.added)
    for item in report.inputs:
        if item.status == "accepted" and item.sha256 not in added:
            item.status = "duplicate"
    report.net_speech_seconds = sum(
        i.speech_seconds or 0.0 for i in report.inputs if i.status == "accepted"
    )
    if result.speaker is not None:
        report.utterances = result.speaker.utterances
        report.total_speech_seconds = result.speaker.speech_seconds


def set_totals(report: EnrollmentReport, record: SpeakerRecord | None) -> None:
    """Totals of a speaker this call did not change (``None``: it does not exist)."""
    report.utterances = record.utterances if record is not None else 0
    report.total_speech_seconds = record.speech_seconds if record is not None else 0.0


def finish_report(
    report: EnrollmentReport, result: EnrollResult | None, threshold: float
) -> EnrollmentReport:
    """Add the warnings: recordings inconsistent with the speaker's others (below
    ``threshold`` against the mean of the others), and too little speech in total.

    ``result``: what the enrolling transaction returned (None when nothing was stored).
    """
    embeddings = result.utterance_embeddings if result is not None else None
    if report.changed and result is not None and embeddings is not None and len(embeddings) >= 2:
        by_hash = dict(zip(result.utterance_hashes, _leave_one_out(embeddings), strict=True))
        for item in report.inputs:
            score = by_hash.get(item.sha256 or "") if item.status == "accepted" else None
            if score is None:
                continue
            item.consistency = score
            if score < threshold:
                report.warnings.append(
                    EnrollmentWarning(
                        "inconsistent_recording",
                        f"{item.source} scores {score:.3f} against the other recordings of "
                        f"{report.speaker!r} (threshold {threshold:.3f}): it may be another "
                        "speaker",
                        item.source,
                    )
                )
    if report.little_speech:
        report.warnings.append(
            EnrollmentWarning(
                "little_speech",
                f"{report.speaker!r} has {report.total_speech_seconds:.1f} s of speech; at "
                f"least {RECOMMENDED_SPEECH_SECONDS:.0f} s is recommended for reliable "
                "verification",
            )
        )
    return report


def _leave_one_out(embeddings: npt.NDArray[np.float32]) -> list[float]:
    """Cosine of each embedding with the mean of all the others: (n, D) -> n scores."""
    total = embeddings.astype(np.float64).sum(axis=0)
    return [
        float(cosine_scores(embeddings[i], total - embeddings[i])) for i in range(len(embeddings))
    ]


class ManifestEnrollment:
    """One manifest enrollment: embeds every file in one batched pass, and commits speakers
    as soon as all their recordings are embedded, several per transaction (see
    :data:`MANIFEST_COMMIT_SPEAKERS`), so an interrupted run keeps what it finished and a
    rerun skips the already-enrolled audio (decoded to recognise it, not re-embedded)."""

    def __init__(
        self,
        store: EnrollmentStore,
        identity: ModelIdentity,
        entries: Sequence[ManifestEntry],
        mode: EnrollMode,
        threshold: float,
        guard: AppendGuard | None = None,
    ) -> None:
        from speakerdb.storage._store import validated_name

        self._store = store
        self._identity = identity
        self._mode = mode
        self._guard = guard
        self._threshold = threshold
        self.by_speaker: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            self.by_speaker.setdefault(validated_name(entry.speaker), []).append(index)
        self._speaker_of = {i: n for n, indexes in self.by_speaker.items() for i in indexes}
        names = list(self.by_speaker)
        self._existing = store.speaker_records(names)
        self._known = store.existing_hashes(names) if mode == "append" else {}
        self.reports = {n: EnrollmentReport(speaker=n, mode=mode) for n in names}
        self._results: dict[str, dict[int, EmbeddedAudio]] = {n: {} for n in names}
        self._ready: list[str] = []
        self._last_commit = time.monotonic()
        # Each speaker's consent and retention, from the lines that give them (read_manifest
        # checked that they agree).
        self._consent: dict[str, str] = {}
        self._expires: dict[str, str] = {}
        for entry in entries:
            name = validated_name(entry.speaker)
            if entry.consent is not None:
                self._consent.setdefault(name, entry.consent)
            if entry.expires_after is not None:
                self._expires.setdefault(name, entry.expires_after)

    def skip(self, index: int, sha256: str) -> bool:
        """Whether a decoded input need not be embedded (see Embedder.iter_embed)."""
        name = self._speaker_of[index]
        if self._mode == "skip" and name in self._existing:
            return True
        return sha256 in self._known.get(name, set())

    def known_for(self, index: int) -> set[str] | None:
        """The audio (sha256) input ``index`` need not be embedded for; None: none of it
        (mode skip, the speaker exists). :meth:`skip` as data, for workers elsewhere."""
        name = self._speaker_of[index]
        if self._mode == "skip" and name in self._existing:
            return None
        return self._known.get(name, set())

    def add(self, index: int, result: EmbeddedAudio) -> None:
        """One input is embedded (or failed); commit when the rhythm says so."""
        name = self._speaker_of[index]
        self._results[name][index] = result
        if len(self._results[name]) == len(self.by_speaker[name]):
            self._ready.append(name)
        if self._ready and (
            len(self._ready) >= MANIFEST_COMMIT_SPEAKERS
            or time.monotonic() - self._last_commit >= MANIFEST_COMMIT_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Commit every speaker whose recordings are all embedded, in one transaction."""
        names, self._ready = self._ready, []
        self._last_commit = time.monotonic()
        if not names:
            return
        requests: list[EnrollRequest] = []
        for name in names:
            report = self.reports[name]
            ordered = [self._results[name][i] for i in self.by_speaker[name]]
            if self._mode == "skip" and name in self._existing:
                mark_skipped(report, ordered)
                continue
            accepted = sort_inputs(report, ordered, self._known.get(name, set()))
            if accepted:
                requests.append(
                    EnrollRequest(
                        name,
                        accepted,
                        self._mode,
                        None,
                        expires_at=expires_at_after(self._expires.get(name), utcnow()),
                        consent=self._consent.get(name),
                    )
                )
        results: dict[str, EnrollResult] = {}
        if requests:
            for result in self._store.enroll_many(requests, self._identity, self._guard):
                if result.refused and self._guard is not None:
                    self._guard.mark_refused(self.reports[result.name])
                    set_totals(self.reports[result.name], result.speaker)
                    continue
                results[result.name] = result
                apply_result(self.reports[result.name], result)
        for name in names:
            stored = results.get(name)
            if stored is None and self.reports[name].refused == 0:
                # nothing stored: the speaker as it stood when the run began
                set_totals(self.reports[name], self._existing.get(name))
            finish_report(self.reports[name], stored, self._threshold)

    def ordered_reports(self) -> list[EnrollmentReport]:
        return [self.reports[name] for name in self.by_speaker]
