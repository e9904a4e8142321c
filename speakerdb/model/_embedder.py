"""The Embedder: recordings in, L2-normalised voiceprints out.

Throughput comes from three things. The 1.6 s windows of *all* recordings are encoded
together in fixed-size batches, whatever the files' lengths; decoding and preprocessing run in
background threads a few files ahead, so the encoder never waits on I/O; and on CPU each core
runs its own single-threaded encoder on its own batch (see :func:`_encoder_workers`). Each
window is encoded independently and batches are cut in input order, so an embedding never
depends on the other files in the batch and repeated runs give identical vectors.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from speakerdb._identity import ModelIdentity
from speakerdb._results import Comparison, DecisionRule
from speakerdb.errors import AudioDecodeError, AudioError, UsageError
from speakerdb.model._audio import AudioInput, source_label
from speakerdb.model._device import resolve_device
from speakerdb.model._ge2e import GE2EEncoder
from speakerdb.model._utterance import PreparedUtterance, prepare_utterance
from speakerdb.scoring import accept, cosine, validate_threshold

__all__ = ["DEFAULT_BATCH_SIZE", "EmbeddedAudio", "Embedder"]

DEFAULT_BATCH_SIZE = 64
"""Windows per encoder call. Larger batches barely help an LSTM on CPU; on a GPU raise it."""
_LOOKAHEAD = 4  # files prepared ahead of the encoder


@dataclass(frozen=True)
class EmbeddedAudio:
    """The outcome for one input: ``vector`` (256,) float32 unit-norm, or ``error``.

    sha256 / duration (s) / speech_seconds (s after silence trimming) / bandwidth_hz (Hz, a
    calibration quality measure; None if unmeasurable) are set when decoding succeeded.
    ``skipped``: decoded but deliberately not encoded (see ``Embedder.iter_embed``).
    """

    source: str
    vector: npt.NDArray[np.float32] | None
    error: AudioError | None = None
    sha256: str | None = None
    duration: float | None = None
    speech_seconds: float | None = None
    skipped: bool = False
    bandwidth_hz: float | None = None

    @property
    def ok(self) -> bool:
        return self.vector is not None


ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``: inputs finished so far, out of ``total``."""
SkipPredicate = Callable[[int, str], bool]


class Embedder:
    """Turns speech into voiceprints with one model on one device.

    Made by :func:`speakerdb.load_model`. ``identity`` names the model (recorded with every
    stored vector) and carries its calibrated ``default_threshold``.
    """

    def __init__(self, encoder: GE2EEncoder, identity: ModelIdentity, device: torch.device) -> None:
        self._encoder = encoder.to(device).eval()
        self.identity = identity
        self.device = device

    @property
    def dimension(self) -> int:
        return self.identity.dimension

    @property
    def default_threshold(self) -> float:
        return self.identity.default_threshold

    def to(self, device: str | torch.device | None) -> Embedder:
        """Move the encoder to ``device`` (None: CUDA if available, else CPU); returns self."""
        target = resolve_device(device)
        if target != self.device:
            self._encoder = self._encoder.to(target)
            self.device = target
        return self

    def __repr__(self) -> str:
        return f"Embedder(model={self.identity.label!r}, device={str(self.device)!r})"

    # --- embedding -----------------------------------------------------------------------------

    def embed(
        self,
        sources: Iterable[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: ProgressCallback | None = None,
        raise_errors: bool = False,
        skip: SkipPredicate | None = None,
    ) -> list[EmbeddedAudio]:
        """Embed recordings, one result per input, in input order.

        sources: paths or arrays (arrays need ``sample_rate``). batch_size: windows per encoder
        call. progress: called as ``progress(done, total)`` as inputs finish. With
        ``raise_errors`` the first unusable input raises its AudioError; otherwise it is
        reported in its result and the others go on. skip: see :meth:`iter_embed`.
        """
        items = list(sources)
        results: dict[int, EmbeddedAudio] = {}
        for index, result in self.iter_embed(
            items, sample_rate=sample_rate, batch_size=batch_size, skip=skip
        ):
            if raise_errors and result.error is not None:
                raise result.error
            results[index] = result
            if progress is not None:
                progress(len(results), len(items))
        return [results[i] for i in range(len(results))]

    def iter_embed(
        self,
        sources: Iterable[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        skip: SkipPredicate | None = None,
    ) -> Iterator[tuple[int, EmbeddedAudio]]:
        """Yield ``(input index, result)`` as each input is finished (roughly in input order).

        skip: called as ``skip(index, sha256)`` once an input is decoded; when it returns True
        the input is not encoded and its result has ``skipped=True`` (used to pass over audio
        that is already enrolled).
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        partial: dict[int, _PartialSum] = {}
        finished: collections.deque[tuple[int, EmbeddedAudio]] = collections.deque()

        def collect(
            job: tuple[concurrent.futures.Future[npt.NDArray[np.float32]], _Owners],
        ) -> None:
            future, owners = job
            out = future.result()
            offset = 0
            for index, count in owners:
                acc = partial[index]
                if acc.add(out[offset : offset + count]):
                    del partial[index]
                    finished.append((index, acc.result()))
                offset += count

        with _encoder_workers(self.device) as (encode_pool, workers):
            batcher = _WindowBatcher(batch_size)
            inflight: collections.deque[
                tuple[concurrent.futures.Future[npt.NDArray[np.float32]], _Owners]
            ]
            inflight = collections.deque()

            def submit(batches: Iterable[tuple[torch.Tensor, _Owners]]) -> None:
                for windows, owners in batches:
                    inflight.append((encode_pool.submit(self._encode, windows), owners))
                    while len(inflight) > 2 * workers:
                        collect(inflight.popleft())

            for index, item in enumerate(_prepared_stream(sources, sample_rate, workers)):
                if isinstance(item, AudioError):
                    finished.append((index, EmbeddedAudio(item.source, None, error=item)))
                elif skip is not None and skip(index, item.sha256):
                    finished.append((index, _described(item, None, skipped=True)))
                else:
                    partial[index] = _PartialSum(item, self.dimension)
                    submit(batcher.add(index, item.windows))
                while finished:
                    yield finished.popleft()
            submit(batcher.flush())
            while inflight:
                collect(inflight.popleft())
                while finished:
                    yield finished.popleft()
        assert not partial

    def _encode(self, windows: torch.Tensor) -> npt.NDArray[np.float32]:
        """(B, 160, 40) float32 -> (B, 256) float32 unit-norm window embeddings (on CPU)."""
        with torch.inference_mode():
            out = self._encoder(windows.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def embed_files(
        self,
        paths: Sequence[AudioInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | ProgressCallback = False,
        sample_rate: int | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed several recordings. Returns (N, 256) float32, row i for ``paths[i]``.

        Raises the AudioError of the first unusable input (use :meth:`embed` to collect
        errors instead). ``progress=True`` draws a progress bar on stderr.
        """
        callback = _progress_callback(progress)
        try:
            results = self.embed(
                paths,
                sample_rate=sample_rate,
                batch_size=batch_size,
                progress=callback,
                raise_errors=True,
            )
        finally:
            if callback is not None and hasattr(callback, "close"):
                callback.close()
        if not results:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([r.vector for r in results if r.vector is not None])

    def get_embedding(
        self, path_or_array: AudioInput, sample_rate: int | None = None
    ) -> npt.NDArray[np.float32]:
        """Voiceprint of one recording: (256,) float32, unit L2 norm.

        ``sample_rate`` is required when passing an array (any rate; resampled to 16 kHz).
        Raises an AudioError subclass when the input is unusable.
        """
        result = self.embed([path_or_array], sample_rate=sample_rate, raise_errors=True)[0]
        assert result.vector is not None
        return result.vector

    # --- comparing -------------------------------------------------------------------------------

    def _threshold(self, threshold: float | None) -> float:
        return self.default_threshold if threshold is None else validate_threshold(threshold)

    def compare(self, a: AudioInput, b: AudioInput, threshold: float | None = None) -> Comparison:
        """Same speaker? Scores ``a`` against ``b`` with the cosine rule (a model alone has no
        database, hence no calibration: :meth:`SpeakerDB.compare` decides on LLRs).

        threshold: None uses the model's default cosine threshold.
        """
        used = self._threshold(threshold)
        vectors = self.embed_files([a, b])
        score = cosine(vectors[0], vectors[1])
        origin = "model_default" if threshold is None else "given"
        return Comparison(
            score=score,
            threshold=used,
            same_speaker=accept(score, used),
            model=self.identity.label,
            a=source_label(a),
            b=source_label(b),
            decision_rule=DecisionRule("cosine", used, origin),
        )

    def verify_speakers(
        self,
        path2audio_file1: AudioInput,
        path2audio_file2: AudioInput,
        threshold: float | None = None,
    ) -> bool:
        """True iff the two recordings score at or above ``threshold`` (default: the model's)."""
        return self.compare(path2audio_file1, path2audio_file2, threshold).same_speaker

    def verify_speakers_batch(
        self,
        audio_files_pairs: Sequence[tuple[AudioInput, AudioInput]],
        threshold: float | None = None,
        batch_size: int = 32,
        sample_rate: int = 16000,
        device: str | torch.device | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Decisions for many pairs: (P,) bool, True where the pair is the same speaker.

        Each distinct file is embedded once. ``batch_size`` is the number of windows encoded
        per call; ``sample_rate`` applies to in-memory arrays (files use their own rate);
        ``device``, when given, moves the model there first.
        """
        if device is not None:
            self.to(device)
        used = self._threshold(threshold)
        if not audio_files_pairs:
            return np.zeros(0, dtype=bool)
        scores = self.score_pairs(audio_files_pairs, batch_size=batch_size, sample_rate=sample_rate)
        return np.array([accept(s, used) for s in scores], dtype=bool)

    def embed_distinct(
        self,
        items: Sequence[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: ProgressCallback | None = None,
    ) -> tuple[list[int], list[EmbeddedAudio]]:
        """Embed each distinct input of ``items`` once (paths by name, arrays by identity).

        Returns ``(position, results)``: ``results[position[i]]`` is the result for
        ``items[i]``. Unusable inputs are reported in their result, not raised.
        """
        keys: dict[object, int] = {}
        distinct: list[AudioInput] = []
        position: list[int] = []
        for item in items:
            key = ("array", id(item)) if isinstance(item, np.ndarray) else ("path", str(item))
            if key not in keys:
                keys[key] = len(distinct)
                distinct.append(item)
            position.append(keys[key])
        results = self.embed(
            distinct, sample_rate=sample_rate, batch_size=batch_size, progress=progress
        )
        return position, results

    def score_pairs(
        self,
        pairs: Sequence[tuple[AudioInput, AudioInput]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        sample_rate: int | None = None,
    ) -> npt.NDArray[np.float64]:
        """Cosine scores (P,) float64 of many pairs, embedding each distinct file once.
        Raises the AudioError of the first unusable file."""
        items = list(itertools.chain.from_iterable(pairs))
        position, results = self.embed_distinct(
            items, sample_rate=sample_rate, batch_size=batch_size
        )
        for result in results:
            if result.error is not None:
                raise result.error
        vectors = [results[p].vector for p in position]
        return np.array(
            [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))],
            dtype=np.float64,
        )


_Owners = list[tuple[int, int]]
"""(input index, number of its windows) for each run of windows in a batch, in order."""


class _PartialSum:
    """Sum of the window embeddings of one utterance, until all its windows are in."""

    def __init__(self, prepared: PreparedUtterance, dimension: int) -> None:
        self.prepared = prepared
        self.remaining = prepared.windows.shape[0]
        self.total = np.zeros(dimension, dtype=np.float64)

    def add(self, window_embeddings: npt.NDArray[np.float32]) -> bool:
        """Add (k, D) window embeddings; True once every window has been added."""
        self.total += window_embeddings.sum(axis=0, dtype=np.float64)
        self.remaining -= window_embeddings.shape[0]
        return self.remaining == 0

    def result(self) -> EmbeddedAudio:
        vector = (self.total / np.linalg.norm(self.total)).astype(np.float32)
        return _described(self.prepared, vector)


def _described(
    prepared: PreparedUtterance, vector: npt.NDArray[np.float32] | None, skipped: bool = False
) -> EmbeddedAudio:
    return EmbeddedAudio(
        prepared.source,
        vector,
        sha256=prepared.sha256,
        duration=prepared.duration,
        speech_seconds=prepared.speech_seconds,
        skipped=skipped,
        bandwidth_hz=prepared.bandwidth_hz,
    )


class _WindowBatcher:
    """Cuts the windows of consecutive utterances into batches of exactly ``size`` windows
    (the last may be smaller), in input order, so batch contents are deterministic."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: list[torch.Tensor] = []
        self._owners: _Owners = []
        self._count = 0

    def add(self, index: int, windows: torch.Tensor) -> Iterator[tuple[torch.Tensor, _Owners]]:
        while windows.shape[0]:
            take = min(self.size - self._count, windows.shape[0])
            self._parts.append(windows[:take])
            self._owners.append((index, take))
            self._count += take
            windows = windows[take:]
            if self._count == self.size:
                yield self._take()

    def flush(self) -> Iterator[tuple[torch.Tensor, _Owners]]:
        if self._count:
            yield self._take()

    def _take(self) -> tuple[torch.Tensor, _Owners]:
        parts, owners = self._parts, self._owners
        self._parts, self._owners, self._count = [], [], 0
        return (torch.cat(parts) if len(parts) > 1 else parts[0]), owners


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextlib.contextmanager
def _encoder_workers(
    device: torch.device,
) -> Iterator[tuple[concurrent.futures.ThreadPoolExecutor, int]]:
    """A pool of encoder threads and its size.

    On CPU, one single-threaded encoder per core the process may use: an LSTM step is too
    small to split across cores without a barrier per step, and with decoding running beside
    it those barriers stall whenever a core is busy elsewhere. Independent batches on
    independent cores keep every core busy. On a GPU, one thread feeds the device.
    """
    global _threads_users, _threads_saved
    if device.type != "cpu":
        with concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="speakerdb-encode"
        ) as pool:
            yield pool, 1
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
        workers = max(1, _threads_saved)
    try:
        with concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="speakerdb-encode"
        ) as pool:
            yield pool, workers
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _prepared_stream(
    sources: Iterable[AudioInput], sample_rate: int | None, workers: int
) -> Iterator[PreparedUtterance | AudioError]:
    """Prepared utterances in input order, decoded by ``workers`` background threads running
    a few files ahead of the encoder.

    Unusable inputs come out as their AudioError instead of a PreparedUtterance.
    """
    items = iter(sources)
    with concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="speakerdb-decode"
    ) as pool:
        ahead: collections.deque[concurrent.futures.Future[PreparedUtterance | AudioError]]
        ahead = collections.deque(
            pool.submit(_prepare_or_error, item, sample_rate)
            for item in itertools.islice(items, _LOOKAHEAD + workers)
        )
        while ahead:
            future = ahead.popleft()
            for item in itertools.islice(items, 1):
                ahead.append(pool.submit(_prepare_or_error, item, sample_rate))
            yield future.result()


def _prepare_or_error(
    source: AudioInput, sample_rate: int | None
) -> PreparedUtterance | AudioError:
    try:
        return prepare_utterance(source, sample_rate)
    except AudioError as exc:
        return exc
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:
        # A decoder tripping over a malformed file must not surface as a traceback.
        return AudioDecodeError(
            source_label(source), f"cannot decode ({type(exc).__name__}: {exc})"
        )


def _progress_callback(progress: bool | ProgressCallback) -> ProgressCallback | None:
    if callable(progress):
        return progress
    if not progress:
        return None
    from speakerdb._progress import ProgressBar

    return ProgressBar("embedding")
