"""The Embedder: recordings in, L2-normalised voiceprints out, for any model family.

The family (a :class:`~speakerdb.model._encoder.SpeakerEncoder`) brings its resampler, front
end and network; everything else is here and common: decoding, speech checks and quality
measures (:mod:`speakerdb.model._utterance`), threads, devices, batching, L2 normalisation.

Throughput comes from three things. The chunks of *all* recordings (GE2E's 1.6 s windows,
other families' whole utterances) are encoded together in batches, whatever the files'
lengths; decoding and preprocessing run in background threads a few files ahead, so the
encoder never waits on I/O; and on CPU each core runs its own single-threaded encoder on its
own batch (see :func:`_encoder_workers`). Chunks of similar length are batched together,
zero-padded, with their lengths: families with masks everywhere (``exact_padding``) give
the same output whatever the padding, the others get batches of equal lengths only. So an
embedding never depends on the other files in the batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from speakerdb._identity import ModelIdentity
from speakerdb._results import Comparison
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import AudioDecodeError, AudioError, ModelError, UsageError
from speakerdb.model._audio import SAMPLE_RATE, AudioInput, source_label
from speakerdb.model._audio import max_audio_seconds as _audio_limit
from speakerdb.model._device import resolve_device
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._ge2e import GE2EEncoder, GE2ESpeakerEncoder
from speakerdb.model._pairs import decide_pairs
from speakerdb.model._utterance import PreparedUtterance, prepare_utterance
from speakerdb.scoring import accept, cosine, validate_threshold

__all__ = ["DEFAULT_BATCH_SIZE", "EmbeddedAudio", "Embedder", "single_threaded_torch"]

DEFAULT_BATCH_SIZE = 64
"""Chunks (GE2E windows) per encoder call. Larger batches barely help an LSTM on CPU; on a GPU
raise it. Batches of long chunks hold fewer: at most about ``batch_size * 160`` padded frames."""
_FRAMES_PER_SLOT = 160  # padded frames one batch slot stands for (one GE2E window)
_LOOKAHEAD = 4  # files prepared ahead of the encoder


@dataclass(frozen=True)
class EmbeddedAudio:
    """The outcome for one input: ``vector`` (D,) float32 unit-norm, or ``error``.

    sha256 / duration (s) / speech_seconds (s after silence trimming) / bandwidth_hz (Hz, a
    calibration quality measure; None if unmeasurable) are set when decoding succeeded.
    ``skipped``: decoded but deliberately not encoded (see ``Embedder.iter_embed``).
    ``head``, ``head_bandwidth_hz``, ``head_seconds``: the recording's first samples and
    measures as a countermeasure decodes it, as :class:`PreparedUtterance` defines them
    (only when ``head_samples`` was asked for).
    """

    source: str
    vector: npt.NDArray[np.float32] | None
    error: AudioError | None = None
    sha256: str | None = None
    duration: float | None = None
    speech_seconds: float | None = None
    skipped: bool = False
    bandwidth_hz: float | None = None
    head: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    head_bandwidth_hz: float | None = None
    head_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.vector is not None


ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``: inputs finished so far, out of ``total``."""
SkipPredicate = Callable[[int, str], bool]


class Embedder:
    """Turns speech into voiceprints with one model on one device.

    Made by :func:`speakerdb.load_model`, or :meth:`from_encoder` for any family's encoder.
    ``identity`` names the model (recorded with every stored vector) and carries its
    calibrated ``default_threshold``. ``max_audio_seconds``: longest recording accepted (None:
    ``$SPEAKERDB_MAX_AUDIO_SECONDS``, else 3 h); longer ones fail with TooLongError.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder | GE2EEncoder,
        identity: ModelIdentity,
        device: torch.device,
        *,
        max_audio_seconds: float | None = None,
    ) -> None:
        if isinstance(encoder, GE2EEncoder):  # the network alone, as before families existed
            encoder = GE2ESpeakerEncoder(encoder, identity.weights_sha256)
        if encoder.sample_rate != SAMPLE_RATE:
            raise ModelError(
                f"{encoder.family} model expects {encoder.sample_rate} Hz audio; the engine's "
                f"speech checks work at {SAMPLE_RATE} Hz"
            )
        if encoder.dimension != identity.dimension:
            raise ModelError(
                f"encoder gives {encoder.dimension}-d embeddings, identity says "
                f"{identity.dimension}"
            )
        encoder.to(device)
        self.encoder = encoder
        self.identity = identity
        self.device = device
        self.max_audio_seconds = max_audio_seconds

    @classmethod
    def from_encoder(
        cls,
        encoder: SpeakerEncoder,
        device: str | torch.device | None = None,
        *,
        name: str | None = None,
        max_audio_seconds: float | None = None,
    ) -> Embedder:
        """An Embedder for a loaded family encoder, its identity made from the encoder:
        ``name`` (default: the family), weights_sha256, dimension, default_threshold.
        device: None picks CUDA when available, else CPU."""
        identity = ModelIdentity(
            name=name or encoder.family,
            weights_sha256=encoder.weights_sha256,
            dimension=int(encoder.dimension),
            default_threshold=float(encoder.default_threshold),
        )
        return cls(encoder, identity, resolve_device(device), max_audio_seconds=max_audio_seconds)

    @property
    def max_audio_seconds(self) -> float:
        """Longest recording accepted, in seconds."""
        return _audio_limit(self._max_audio_seconds)

    @max_audio_seconds.setter
    def max_audio_seconds(self, value: float | None) -> None:
        if value is not None:
            _audio_limit(value)  # validates
        self._max_audio_seconds = value

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
            self.encoder.to(target)
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
        head_samples: int = 0,
    ) -> list[EmbeddedAudio]:
        """Embed recordings, one result per input, in input order.

        sources: paths or arrays (arrays need ``sample_rate``). batch_size: chunks per encoder
        call. progress: called as ``progress(done, total)`` as inputs finish. With
        ``raise_errors`` the first unusable input raises its AudioError; otherwise it is
        reported in its result and the others go on. skip, head_samples: see
        :meth:`iter_embed`.
        """
        items = list(sources)
        results: dict[int, EmbeddedAudio] = {}
        for index, result in self.iter_embed(
            items,
            sample_rate=sample_rate,
            batch_size=batch_size,
            skip=skip,
            head_samples=head_samples,
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
        head_samples: int = 0,
    ) -> Iterator[tuple[int, EmbeddedAudio]]:
        """Yield ``(input index, result)`` as each input is finished (roughly in input order).

        skip: called as ``skip(index, sha256)`` once an input is decoded; when it returns True
        the input is not encoded and its result has ``skipped=True`` (used to pass over audio
        that is already enrolled). head_samples: keep each 16 kHz recording's first samples
        in its result's ``head`` (one decode serving the countermeasure too).
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
            rows: dict[int, list[int]] = {}
            for row, index in enumerate(owners):
                rows.setdefault(index, []).append(row)
            for index, taken in rows.items():
                acc = partial[index]
                if acc.add(out[taken]):
                    del partial[index]
                    finished.append((index, acc.result()))

        limit = self._max_audio_seconds
        with _encoder_workers(self.device) as (encode_pool, workers):
            budget = batch_size * _FRAMES_PER_SLOT
            if self.device.type == "cpu" and self.encoder.cpu_batch_frames is not None:
                budget = min(budget, self.encoder.cpu_batch_frames)
            batcher = _ChunkBatcher(batch_size, self.encoder.exact_padding, budget)
            inflight: collections.deque[
                tuple[concurrent.futures.Future[npt.NDArray[np.float32]], _Owners]
            ]
            inflight = collections.deque()

            def submit(batches: Iterable[tuple[list[torch.Tensor], _Owners]]) -> None:
                for chunks, owners in batches:
                    inflight.append((encode_pool.submit(self._encode, chunks), owners))
                    while len(inflight) > 2 * workers:
                        collect(inflight.popleft())

            stream = _prepared_stream(
                sources, sample_rate, workers, self.encoder, limit, head_samples
            )
            for index, item in enumerate(stream):
                if isinstance(item, AudioError):
                    finished.append((index, EmbeddedAudio(item.source, None, error=item)))
                elif skip is not None and skip(index, item.sha256):
                    finished.append((index, _described(item, None, skipped=True)))
                else:
                    partial[index] = _PartialSum(item, self.dimension)
                    submit(batcher.add(index, item.chunks))
                while finished:
                    yield finished.popleft()
            submit(batcher.flush())
            while inflight:
                collect(inflight.popleft())
                while finished:
                    yield finished.popleft()
        assert not partial

    def encode_windows(self, windows: torch.Tensor) -> npt.NDArray[np.float32]:
        """(B, T, F) float32 inputs of the encoder (GE2E: (160, 40) mel power windows) ->
        (B, D) float32 unit-norm chunk embeddings, in one encoder call on this thread at one
        torch thread (a live session's few windows: more threads only add barriers)."""
        with single_threaded_torch():
            return self._encode(list(windows))

    def _encode(self, chunks: list[torch.Tensor]) -> npt.NDArray[np.float32]:
        """Chunks, each (T_i, F) float32 -> (B, D) float32 chunk embeddings (on CPU); zero-padded
        to the longest, with their lengths, in one encoder call."""
        lengths = torch.tensor([c.shape[0] for c in chunks], dtype=torch.int64)
        longest = int(lengths.max())
        if all(c.shape[0] == longest for c in chunks):
            batch = torch.stack(chunks)
        else:
            batch = chunks[0].new_zeros((len(chunks), longest, chunks[0].shape[1]))
            for row, chunk in enumerate(chunks):
                batch[row, : chunk.shape[0]] = chunk
        with torch.inference_mode():
            out = self.encoder.encode(batch, lengths)
        return np.asarray(out.detach().float().cpu().numpy(), dtype=np.float32)

    def embed_files(
        self,
        paths: Sequence[AudioInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | ProgressCallback = False,
        sample_rate: int | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed several recordings. Returns (N, D) float32, row i for ``paths[i]``.

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
        """Voiceprint of one recording: (D,) float32 (D = 256 for GE2E), unit L2 norm.

        ``sample_rate`` is required when passing an array (any rate; resampled to 16 kHz).
        Raises an AudioError subclass when the input is unusable.
        """
        result = self.embed([path_or_array], sample_rate=sample_rate, raise_errors=True)[0]
        assert result.vector is not None
        return result.vector

    # --- comparing -------------------------------------------------------------------------------

    def compare(self, a: AudioInput, b: AudioInput, threshold: float | None = None) -> Comparison:
        """Same speaker? ``a`` against ``b`` decided by the one rule, exactly as ``speakerdb
        compare A B`` and :meth:`SpeakerDB.compare` without a database decide: the model's
        bundled calibration (``llr >= ln 99``, from the cosine and both files' quality)
        where it has one, else the cosine against the model's threshold.

        threshold: overrides the threshold on that rule's scale (an LLR when calibrated).
        Raises the AudioError of an unusable file, UsageError for a bad threshold.
        """
        options = DecisionOptions(threshold=threshold)
        return decide_pairs(self, [(a, b)], options, batch_size=DEFAULT_BATCH_SIZE)[0]

    def verify_speakers(
        self,
        path2audio_file1: AudioInput,
        path2audio_file2: AudioInput,
        threshold: float | None = None,
    ) -> bool:
        """Same speaker? NeMo's name. Without ``threshold``: :meth:`compare`'s answer (the one
        rule); with one, NeMo's meaning: the cosine against that threshold in [-1, 1]."""
        return bool(
            self.verify_speakers_batch([(path2audio_file1, path2audio_file2)], threshold)[0]
        )

    def verify_speakers_batch(
        self,
        audio_files_pairs: Sequence[tuple[AudioInput, AudioInput]],
        threshold: float | None = None,
        batch_size: int = 32,
        sample_rate: int = 16000,
        device: str | torch.device | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Decisions for many pairs: (P,) bool, True where the pair is the same speaker.

        Decided as :meth:`verify_speakers` decides: by the one rule without ``threshold``,
        else by the cosine against it. Each distinct file is embedded once. ``batch_size``
        is the number of chunks encoded per call; ``sample_rate`` applies to in-memory
        arrays (files use their own rate); ``device``, when given, moves the model there first.
        """
        if device is not None:
            self.to(device)
        used = None if threshold is None else validate_threshold(threshold)
        if not audio_files_pairs:
            return np.zeros(0, dtype=bool)
        if used is None:
            decided = decide_pairs(
                self,
                audio_files_pairs,
                DecisionOptions(),
                batch_size=batch_size,
                sample_rate=sample_rate,
            )
            return np.array([c.same_speaker for c in decided], dtype=bool)
        scores = self.score_pairs(audio_files_pairs, batch_size=batch_size, sample_rate=sample_rate)
        return np.array([accept(s, used) for s in scores], dtype=bool)

    def embed_distinct(
        self,
        items: Sequence[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: ProgressCallback | None = None,
        head_samples: int = 0,
    ) -> tuple[list[int], list[EmbeddedAudio]]:
        """Embed each distinct input of ``items`` once (paths by name, arrays by identity);
        head_samples: see :meth:`iter_embed`.

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
            distinct,
            sample_rate=sample_rate,
            batch_size=batch_size,
            progress=progress,
            head_samples=head_samples,
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
        # Every result is usable here (errors raised above), so each has its vector.
        vectors = [_vector(results[p]) for p in position]
        return np.array(
            [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))],
            dtype=np.float64,
        )


def _vector(result: EmbeddedAudio) -> npt.NDArray[np.float32]:
    if result.vector is None:  # pragma: no cover - results with errors were raised
        raise AssertionError(f"{result.source}: no embedding")
    return result.vector


_Owners = list[int]
"""The input index each row of a batch belongs to."""


class _PartialSum:
    """Sum of the chunk embeddings of one utterance, until all its chunks are in."""

    def __init__(self, prepared: PreparedUtterance, dimension: int) -> None:
        self.prepared = prepared
        self.remaining = len(prepared.chunks)
        self.total = np.zeros(dimension, dtype=np.float64)

    def add(self, chunk_embeddings: npt.NDArray[np.float32]) -> bool:
        """Add (k, D) chunk embeddings; True once every chunk has been added."""
        self.total += chunk_embeddings.sum(axis=0, dtype=np.float64)
        self.remaining -= chunk_embeddings.shape[0]
        if self.remaining == 0:
            self.prepared = _without_chunks(self.prepared)
        return self.remaining == 0

    def result(self) -> EmbeddedAudio:
        vector = (self.total / np.linalg.norm(self.total)).astype(np.float32)
        return _described(self.prepared, vector)


def _without_chunks(prepared: PreparedUtterance) -> PreparedUtterance:
    import dataclasses

    return dataclasses.replace(prepared, chunks=[])


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
        head=prepared.head,
        head_bandwidth_hz=prepared.head_bandwidth_hz,
        head_seconds=prepared.head_seconds,
    )


class _ChunkBatcher:
    """Groups the chunks of consecutive utterances into encoder batches.

    Chunks wait until about two batches' worth are pending, then go out sorted by length
    (stable: equal lengths keep input order), cut when a batch holds ``size`` chunks, when
    padding to its longest would exceed ``budget`` frames (default ``size * 160``; the
    encoder's ``cpu_batch_frames`` on a CPU), or -- for encoders whose output
    depends on padding -- when the length changes. GE2E's equal windows thus go out in input
    order in batches of exactly ``size``. A trailing part-filled batch waits for more chunks
    until :meth:`flush`.
    """

    def __init__(self, size: int, exact_padding: bool, budget: int | None = None) -> None:
        self.size = size
        self.exact_padding = exact_padding
        self.budget = size * _FRAMES_PER_SLOT if budget is None else budget
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (length, index, chunk)
        self._frames = 0

    def add(
        self, index: int, chunks: list[torch.Tensor]
    ) -> Iterator[tuple[list[torch.Tensor], _Owners]]:
        for chunk in chunks:
            self._pending.append((int(chunk.shape[0]), index, chunk))
            self._frames += int(chunk.shape[0])
        if len(self._pending) >= 2 * self.size or self._frames >= 2 * self.budget:
            yield from self._drain(final=False)

    def flush(self) -> Iterator[tuple[list[torch.Tensor], _Owners]]:
        yield from self._drain(final=True)

    def _drain(self, final: bool) -> Iterator[tuple[list[torch.Tensor], _Owners]]:
        pending = sorted(self._pending, key=lambda item: item[0])
        groups: list[list[tuple[int, int, torch.Tensor]]] = []
        group: list[tuple[int, int, torch.Tensor]] = []
        for item in pending:
            if group and (
                len(group) == self.size
                or item[0] * (len(group) + 1) > self.budget
                or (not self.exact_padding and item[0] != group[0][0])
            ):
                groups.append(group)
                group = []
            group.append(item)
        if group and (final or len(group) == self.size):
            groups.append(group)
            group = []
        self._pending = group
        self._frames = sum(item[0] for item in group)
        for done in groups:
            yield [item[2] for item in done], [item[1] for item in done]


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


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """torch at one intra-op thread while inside (counted with the encoder pools', so the
    saved count comes back when the last user leaves). Small networks run on short blocks
    (a live session's speech detector) spend most of a multi-threaded call on barriers:
    15 s of audio in 0.2 s blocks takes 25x the CPU with two threads as with one."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _prepared_stream(
    sources: Iterable[AudioInput],
    sample_rate: int | None,
    workers: int,
    encoder: SpeakerEncoder,
    max_seconds: float | None,
    head_samples: int = 0,
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
            pool.submit(_prepare_or_error, item, sample_rate, encoder, max_seconds, head_samples)
            for item in itertools.islice(items, _LOOKAHEAD + workers)
        )
        while ahead:
            future = ahead.popleft()
            for item in itertools.islice(items, 1):
                ahead.append(
                    pool.submit(
                        _prepare_or_error, item, sample_rate, encoder, max_seconds, head_samples
                    )
                )
            yield future.result()


def _prepare_or_error(
    source: AudioInput,
    sample_rate: int | None,
    encoder: SpeakerEncoder,
    max_seconds: float | None,
    head_samples: int = 0,
) -> PreparedUtterance | AudioError:
    try:
        return prepare_utterance(
            source, sample_rate, encoder, max_seconds=max_seconds, head_samples=head_samples
        )
    except AudioError as exc:
        # Kept as a result: without its traceback, which would keep this worker's frames
        # (and the pool's future) alive for as long as the result (KBs per failed file).
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        return exc
    except RecursionError:
        raise
    except MemoryError:
        # Bounded decoding makes this rare; one file that still exhausts memory must not
        # stop the others.
        return AudioDecodeError(source_label(source), "too large to process in memory")
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
