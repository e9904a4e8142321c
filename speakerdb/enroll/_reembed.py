"""``SpeakerDB.reembed``: switch a database to another embedding model.

Every enrolled recording is decoded again from the path it was enrolled from
(``utterances.source``), checked to be the same audio (its sha256, decoded the way the
database's current model decodes it, must equal the recorded one) and embedded by the new
model; vectors are committed in small batches, so a killed run resumes where it stopped
(vectors already made are kept, not redone) while the database keeps answering with its
current model. When every recording has a vector, one transaction switches the database
(see :func:`speakerdb.storage._reembed.switch_model`). Recordings that are gone, changed or
unusable by the new model are listed and nothing is switched, unless ``allow_missing``: then
they are dropped, and a speaker left without any recording is deleted (listed too).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from speakerdb.errors import AudioError, UsageError
from speakerdb.storage._reembed import (
    NewVector,
    PendingRecording,
    drop_other_vectors,
    other_vector_counts,
    pending_recordings,
    register_model,
    save_vectors,
    switch_model,
)

if TYPE_CHECKING:
    from speakerdb._identity import ModelIdentity
    from speakerdb.enroll._ray_batch import RayOptions
    from speakerdb.model._embedder import Embedder
    from speakerdb.model._encoder import SpeakerEncoder
    from speakerdb.storage._store import EnrollmentStore

__all__ = ["COMMIT_EVERY", "MissingRecording", "ReembedReport", "reembed_store"]

COMMIT_EVERY = 16
"""Recordings per committed batch: a killed run redoes at most this many."""
_MAX_ROUNDS = 5  # passes over recordings enrolled while re-embedding, before giving up


@dataclass(frozen=True)
class MissingRecording:
    """An enrolled recording that cannot be re-embedded. reason: "missing" (no path
    recorded, or no file there), "changed" (the file's audio differs from what was
    enrolled), or an audio error code of the new model (e.g. "too_short")."""

    speaker: str
    source: str | None
    reason: str
    message: str


@dataclass
class ReembedReport:
    """What ``reembed`` did.

    status: "switched" (the database now uses ``model``), "blocked" (recordings are
    missing: nothing switched), "current" (the database already uses ``model``), or
    "dropped" (``--drop-old`` alone). recordings: enrolled recordings at the start;
    reembedded: vectors made by this run; reused: vectors an earlier (interrupted) run had
    made, or kept from when the database last used ``model``. switched_recordings: the
    recordings the switching transaction moved to ``model`` -- what the database holds
    from then on, counted in that transaction, so recordings enrolled or deleted by others
    while re-embedding are accounted for. dropped_recordings / deleted_speakers: what
    ``allow_missing`` removed. calibrations_reset: normalisations
    whose calibration (fitted on the previous model's scores) was removed: decisions use
    ``decision_rule``, the new model's default. old_vectors_dropped: vectors of other models
    deleted (``drop_old``); old_vectors_kept: those still kept, per model.
    """

    status: str
    database: str
    previous_model: str | None
    model: str | None
    recordings: int = 0
    reembedded: int = 0
    reused: int = 0
    switched_recordings: int = 0
    missing: list[MissingRecording] = field(default_factory=list)
    dropped_recordings: int = 0
    deleted_speakers: list[str] = field(default_factory=list)
    calibrations_reset: list[str] = field(default_factory=list)
    decision_rule: dict[str, Any] | None = None
    old_vectors_dropped: int = 0
    old_vectors_kept: dict[str, int] = field(default_factory=dict)

    @property
    def switched(self) -> bool:
        return self.status == "switched"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, int], None]


def reembed_store(
    store: EnrollmentStore,
    current: Callable[[], Embedder],
    new: Embedder | None,
    *,
    allow_missing: bool = False,
    drop_old: bool = False,
    progress: Progress | None = None,
    commit_every: int = COMMIT_EVERY,
    ray: RayOptions | None = None,
) -> ReembedReport:
    """Switch ``store`` to the model ``new`` (None: only ``drop_old``).

    current: loads the database's current model, needed only to check that recordings are
    unchanged (its audio pipeline defines the recorded sha256). progress: called as
    ``progress(done, total)`` after each committed batch (done counts every recording with a
    vector of the new model, including those of earlier runs). ray: check and embed on a Ray
    cluster instead (the batches committed here as without it).

    Raises UsageError (read-only, empty database, nothing asked), ModelError /
    ModelNotFoundError (the current model cannot be loaded to check recordings),
    StoreError.
    """
    if commit_every < 1:
        raise UsageError(f"commit_every must be at least 1, not {commit_every}")
    if store.read_only:
        raise UsageError(f"cannot re-embed {store.location.display}: opened read-only")
    held = store.model()
    if new is None:
        if not drop_old:
            raise UsageError("give the model to switch to (--model NEW), or --drop-old")
        report = ReembedReport("dropped", store.location.display, None, _label(held))
        report.old_vectors_dropped = drop_other_vectors(store)
        return report
    if held is None:
        raise UsageError(
            f"{store.location.display} has no voiceprints yet: nothing to re-embed "
            "(enroll with --model to choose its model)"
        )
    target = new.identity
    report = ReembedReport("current", store.location.display, held.label, target.label)
    if held.same_model(target):
        store.remember_model_source(target)
        return _finish(store, report, drop_old)

    model_id = register_model(store, target)
    missing: dict[int, MissingRecording] = {}
    checker: SpeakerEncoder | None = None
    first = True
    for _ in range(_MAX_ROUNDS):
        pending, done = pending_recordings(store, model_id)
        pending = [p for p in pending if p.utterance_id not in missing]
        if first:
            report.recordings = done + len(pending) + len(missing)
            report.reused = done
            first = False
        if pending and checker is None and ray is None:
            checker = current().encoder
        total = done + len(pending)
        batches: Iterator[tuple[list[NewVector], dict[int, MissingRecording]]]
        if ray is None:
            batches = (
                _embed_batch(pending[start : start + commit_every], checker, new)  # type: ignore[arg-type]
                for start in range(0, len(pending), commit_every)
            )
        else:
            batches = _ray_batches(ray, held, target, pending, commit_every)
        for vectors, problems in batches:
            save_vectors(store, model_id, target.dimension, vectors)
            missing.update(problems)
            report.reembedded += len(vectors)
            done += len(vectors)
            if progress is not None:
                progress(done, total)
        report.missing = list(missing.values())
        if missing and not allow_missing:
            report.status = "blocked"
            report.old_vectors_kept = other_vector_counts(store)
            return report
        result = switch_model(
            store, target, model_id, allow_missing=allow_missing, expected_missing=missing
        )
        if result.lacking:
            continue  # recordings enrolled meanwhile: embed them too
        if not result.switched:  # another run switched it first
            return _finish(store, report, drop_old)
        report.status = "switched"
        report.switched_recordings = result.recordings
        report.dropped_recordings = len(result.dropped_recordings)
        report.deleted_speakers = result.deleted_speakers
        report.calibrations_reset = result.calibrations_reset
        _refresh_index(store)
        return _finish(store, report, drop_old)
    raise UsageError(
        f"recordings kept being enrolled into {store.location.display} while re-embedding: "
        "run it again when enrollment pauses"
    )


def _finish(store: EnrollmentStore, report: ReembedReport, drop_old: bool) -> ReembedReport:
    if drop_old:
        report.old_vectors_dropped = drop_other_vectors(store)
    report.old_vectors_kept = other_vector_counts(store)
    return report


def _refresh_index(store: EnrollmentStore) -> None:
    """Replace the index file (the previous model's centroids) by one of the new model. The
    file is a cache: if it cannot be written now, the next opener rebuilds it."""
    from speakerdb.errors import StoreError

    if store.location.index_path is None:
        return
    try:
        store.rebuild_index()
    except (StoreError, OSError):
        store.erase_traces()


def _embed_batch(
    batch: Sequence[PendingRecording], checker: SpeakerEncoder, new: Embedder
) -> tuple[list[NewVector], dict[int, MissingRecording]]:
    """Vectors of the recordings of ``batch`` that are still the enrolled audio, and why the
    others cannot be re-embedded."""
    from speakerdb.model._utterance import decoded_digest

    problems: dict[int, MissingRecording] = {}
    same: list[PendingRecording] = []
    for item in batch:
        if item.source is None or not os.path.isfile(item.source):
            where = "no path was recorded" if item.source is None else "no such file"
            problems[item.utterance_id] = MissingRecording(
                item.speaker, item.source, "missing", where
            )
            continue
        try:
            digest = decoded_digest(item.source, checker)
        except AudioError as exc:
            problems[item.utterance_id] = MissingRecording(
                item.speaker, item.source, exc.code, exc.reason
            )
            continue
        if digest != item.audio_sha256:
            problems[item.utterance_id] = MissingRecording(
                item.speaker,
                item.source,
                "changed",
                "the file's audio differs from the enrolled recording",
            )
            continue
        same.append(item)
    vectors: list[NewVector] = []
    for index, result in new.iter_embed([item.source for item in same]):  # type: ignore[misc]
        item = same[index]
        if result.vector is None or result.sha256 is None:
            code, why = (result.error.code, result.error.reason) if result.error else ("error", "")
            problems[item.utterance_id] = MissingRecording(item.speaker, item.source, code, why)
            continue
        vectors.append(NewVector(item.utterance_id, result.sha256, result.vector))
    return vectors, problems


def _ray_batches(
    ray: RayOptions,
    held: ModelIdentity,
    target: ModelIdentity,
    pending: Sequence[PendingRecording],
    commit_every: int,
) -> Iterator[tuple[list[NewVector], dict[int, MissingRecording]]]:
    """:func:`_embed_batch`'s answers for ``pending``, checked and embedded on a Ray cluster
    in one job, handed back ``commit_every`` recordings at a time."""
    from speakerdb.enroll._ray_batch import ray_iter_embed

    if not pending:
        return
    vectors: list[NewVector] = []
    problems: dict[int, MissingRecording] = {}
    stream = ray_iter_embed(
        ray,
        target,
        [item.source or "" for item in pending],
        [()] * len(pending),
        check=held,
        expect=[item.audio_sha256 for item in pending],
    )
    for index, result in stream:
        item = pending[index]
        if result.vector is None or result.sha256 is None:
            code, why = (result.error.code, result.error.reason) if result.error else ("error", "")
            if item.source is None:
                code, why = "missing", "no path was recorded"
            problems[item.utterance_id] = MissingRecording(item.speaker, item.source, code, why)
        else:
            vectors.append(NewVector(item.utterance_id, result.sha256, result.vector))
        if len(vectors) + len(problems) >= commit_every:
            yield vectors, problems
            vectors, problems = [], {}
    if vectors or problems:
        yield vectors, problems


def _label(identity: Any) -> str | None:
    return None if identity is None else str(identity.label)
