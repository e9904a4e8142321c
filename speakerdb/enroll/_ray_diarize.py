"""Diarization of many recordings on a Ray cluster: each recording's voices are found
(:func:`speakerdb.diarize.analyse_voices`: decoding, speech activity, window embeddings,
clustering, turns, one voiceprint per voice) by an actor of a Ray Data pool that loaded the
model once; the driver gets back each recording's :class:`~speakerdb.diarize.VoiceAnalysis`
(or its error) and names the voices against the enrolled speakers itself, with the same
code as the one-machine command (:meth:`SpeakerDB.diarize`). The workers never open the
database.

Ray is imported only when a job starts (extra ``speakerdb[ray]``); the workers read the
audio by path, so on a real cluster the files must be where every node sees them.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb import errors
from speakerdb._identity import ModelIdentity
from speakerdb.enroll._ray_batch import (
    RayOptions,
    actor_pool,
    job_error,
    load_embedder,
    mark_first_batch,
    ray_session,
)
from speakerdb.errors import AudioError, SpeakerDBError

if TYPE_CHECKING:
    from speakerdb.diarize import DiarizationSettings, VoiceAnalysis

__all__ = ["DEFAULT_RECORDINGS_PER_TASK", "ray_iter_analyse"]

DEFAULT_RECORDINGS_PER_TASK = 1
"""Recordings per ``map_batches`` call for diarization: a recording of minutes is already
seconds of work, so one per task balances the pool best and repeats least on a retry."""


def ray_iter_analyse(
    options: RayOptions,
    identity: ModelIdentity,
    paths: Sequence[str],
    settings: DiarizationSettings,
) -> Iterator[tuple[int, VoiceAnalysis | SpeakerDBError]]:
    """Yield ``(index, analysis or error)`` for every path, in the order the cluster
    finishes them: what :func:`speakerdb.diarize.analyse_voices` returns or raises (a
    :class:`SpeakerDBError`; any other exception of a worker fails the job, as it would
    stop the one-machine command). Raises ConfigurationError when the cluster cannot be
    reached or the job fails, ModelMismatchError when a worker loads other weights."""
    if not paths:
        return
    with ray_session(options) as ray:
        import ray.data

        blocks = max(1, math.ceil(len(paths) / options.files_per_task))
        workers, per_worker, device = actor_pool(ray, options, blocks)
        rows = [{"index": i, "path": str(path)} for i, path in enumerate(paths)]
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _DiarizeWorker,
            fn_constructor_kwargs={
                "model": identity.source or identity.name,
                "key": identity.key,
                "device": device,
                "settings": settings,
            },
            batch_size=options.files_per_task,
            batch_format="numpy",
            # A dead actor is restarted and its batch run again (see _ray_batch).
            compute=ray.data.ActorPoolStrategy(size=workers),
            **per_worker,
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, payload in zip(batch["index"], batch["payload"], strict=True):
                    yield int(index), _outcome(bytes(payload))
        except ray.exceptions.RayError as exc:
            raise job_error(exc) from None


@dataclass(frozen=True)
class _Failure:
    """A worker's SpeakerDBError as plain data (AudioError's arguments do not survive
    pickling as an exception)."""

    kind: str
    message: str
    source: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, exc: SpeakerDBError) -> _Failure:
        if isinstance(exc, AudioError):
            return cls(type(exc).__name__, exc.message, exc.source, exc.reason)
        return cls(type(exc).__name__, exc.message)

    def error(self) -> SpeakerDBError:
        """The error as the worker raised it (its class and message)."""
        kind = getattr(errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, SpeakerDBError)):
            return SpeakerDBError(self.message)
        if issubclass(kind, AudioError):
            return kind(self.source or "", self.reason or self.message)
        try:
            return kind(self.message)
        except TypeError:  # a class with more arguments
            return SpeakerDBError(self.message)


def _outcome(payload: bytes) -> VoiceAnalysis | SpeakerDBError:
    # The payload comes from this job's own workers (pickled by them, as Ray pickles
    # everything it moves between them).
    value = pickle.loads(payload)
    return value.error() if isinstance(value, _Failure) else value


class _DiarizeWorker:
    """One actor of the pool: the model loaded once, then recordings analysed."""

    def __init__(
        self,
        model: str,
        key: tuple[str, str, int],
        device: str,
        settings: DiarizationSettings,
    ) -> None:
        self.embedder = load_embedder(model, key, device)
        self.settings = settings
        self.batches = 0

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        from speakerdb.diarize import analyse_voices

        payloads: list[bytes] = []
        for path in batch["path"]:
            outcome: VoiceAnalysis | _Failure
            try:
                outcome = analyse_voices(str(path), self.embedder, self.settings)
            except SpeakerDBError as exc:
                outcome = _Failure.of(exc)
            payloads.append(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
        self.batches += 1
        if self.batches == 1:
            mark_first_batch()
        return {
            "index": np.array([int(i) for i in batch["index"]], dtype=np.int64),
            "payload": np.array(payloads, dtype=object),
        }
