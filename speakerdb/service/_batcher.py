"""The micro-batcher: recordings of concurrent requests embedded together, in one call.

An Embedder is fastest on many recordings at once (their windows share encoder batches and
decoding runs ahead of the encoder). A server receives recordings one request at a time, so
:class:`BatchingEmbedder` -- an Embedder that the SpeakerDB facade uses like any other --
queues each request's recordings and a single thread embeds whatever is queued in one
``Embedder.embed`` call of the real model.

When to start a batch: at once, unless requests announced by the service (uploads being
received and parsed, see :meth:`BatchingEmbedder.announce`) have not handed in their
recordings yet; then it waits for them, at most ``max_wait_s`` after the first queued one.
An unloaded request therefore never waits, and under load, requests arriving while a batch
runs are all in the next one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speakerdb import EmbeddedAudio, Embedder
from speakerdb.errors import AudioError, BusyError
from speakerdb.model import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from speakerdb.model import AudioInput

__all__ = ["BatchStats", "BatchingEmbedder", "Upload"]

log = logging.getLogger(__name__)


class Upload(os.PathLike[str]):
    """A recording received by the service: a private temporary file, the name the client
    gave it (``label``, used in every answer and stored as the recording's source instead of
    the temporary path), and the error found before decoding (too long), if any."""

    def __init__(self, path: Path, label: str, error: AudioError | None = None) -> None:
        self.path = path
        self.label = label
        self.error = error

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Upload({self.label!r})"


@dataclass(frozen=True)
class BatchStats:
    """One batch: how many recordings, from how many requests, embedded in how long (s)."""

    files: int
    requests: int
    seconds: float


@dataclass
class _Job:
    items: list[AudioInput]
    sample_rate: int | None
    skip: Callable[[int, str], bool] | None
    future: Future[list[EmbeddedAudio]] = field(default_factory=Future)
    head_samples: int = 0


@dataclass
class _WindowJob:
    windows: torch.Tensor  # (B, T, F) encoder inputs of one live session
    future: Future[npt.NDArray[np.float32]] = field(default_factory=Future)


class _Announcement:
    """A request that will hand in recordings (see :meth:`BatchingEmbedder.announce`)."""

    pending = True


_announced: contextvars.ContextVar[_Announcement | None] = contextvars.ContextVar(
    "speakerdb_announced", default=None
)


class BatchingEmbedder(Embedder):
    """An Embedder whose :meth:`embed` calls, from any number of threads, are served by
    batches of the wrapped model (see the module docstring). Thread-safe.

    inner: the real model. max_wait_s: longest wait for announced requests once something
    is queued. max_files: most recordings per batch. timeout_s: how long a call waits for
    its results before raising BusyError. on_batch: called after each batch (metrics).
    parallel: batches embedded at once, each by a thread of its own. A batch of a few
    recordings fills one encoder batch, which one core encodes: a second batch in flight
    keeps the other core busy (measured: 16 clients on 2 cores went from about 0.9x to
    about 1.1-1.3x the offline batch rate). Call :meth:`close` to stop the threads.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_wait_s: float = 0.01,
        max_files: int = 64,
        timeout_s: float = 60.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        parallel: int = 2,
    ) -> None:
        # Embedder.__init__ is not called: the encoder stays the inner model's, and every
        # method that would touch it is routed to the inner model (embed, iter_embed, to).
        self._inner = inner
        self.identity = inner.identity
        self.device = inner.device
        self.max_wait_s = max_wait_s
        self.max_files = max(1, max_files)
        self.timeout_s = timeout_s
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._windows: list[_WindowJob] = []  # live sessions' windows, served first
        self._expected = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"speakerdb-batcher-{n}", daemon=True)
            for n in range(max(1, parallel))
        ]
        for thread in self._threads:
            thread.start()

    def __getattr__(self, name: str) -> Any:
        # Anything else an Embedder has (attributes a newer Embedder may add) is the model's.
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> Embedder:
        return self._inner

    def close(self) -> None:
        """Stop the batching thread once the queue is empty; later calls raise BusyError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def to(self, device: str | torch.device | None) -> Embedder:
        self._inner.to(device)
        self.device = self._inner.device
        return self

    # --- requests that will hand in recordings ----------------------------------------------

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Within this block (a request being received, parsed and checked), a batch that is
        about to start waits a little for this request's recordings: the first :meth:`embed`
        call made in the block's context hands them in."""
        announcement = _Announcement()
        with self._cond:
            self._expected += 1
        token = _announced.set(announcement)
        try:
            yield
        finally:
            _announced.reset(token)
            self._settle(announcement)

    def _settle(self, announcement: _Announcement) -> None:
        with self._cond:
            if announcement.pending:
                announcement.pending = False
                self._expected -= 1
                self._cond.notify_all()

    # --- embedding ----------------------------------------------------------------------------

    def embed(
        self,
        sources: Iterable[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int, int], None] | None = None,
        raise_errors: bool = False,
        skip: Callable[[int, str], bool] | None = None,
        head_samples: int = 0,
    ) -> list[EmbeddedAudio]:
        """Embed recordings, one result per input in input order, as ``Embedder.embed``;
        the work is done in a batch shared with concurrent calls. An :class:`Upload` is
        reported under its label, and one already found unusable is not decoded. Raises
        BusyError when the results do not come within ``timeout_s``."""
        items = list(sources)
        results: list[EmbeddedAudio | None] = [None] * len(items)
        queued: list[int] = []
        for i, item in enumerate(items):
            if isinstance(item, Upload) and item.error is not None:
                results[i] = EmbeddedAudio(item.label, None, error=item.error)
            else:
                queued.append(i)
        announcement = _announced.get()
        if queued:
            job_skip = None
            if skip is not None:
                outer = skip
                positions = list(queued)

                def job_skip(index: int, sha256: str) -> bool:
                    return outer(positions[index], sha256)

            job = _Job([items[i] for i in queued], sample_rate, job_skip, head_samples=head_samples)
            with self._cond:
                if self._closed:
                    raise BusyError("the server is shutting down")
                self._queue.append(job)
                self._cond.notify_all()
            if announcement is not None:
                self._settle(announcement)
            try:
                embedded = job.future.result(timeout=self.timeout_s)
            except TimeoutError:
                job.future.cancel()
                raise BusyError(
                    f"the server could not embed the recordings within {self.timeout_s:g} s; "
                    "try again later"
                ) from None
            for i, result in zip(queued, embedded, strict=True):
                results[i] = _relabelled(items[i], result)
        elif announcement is not None:
            self._settle(announcement)
        out = [r for r in results if r is not None]
        if progress is not None:
            progress(len(out), len(out))
        if raise_errors:
            for r in out:
                if r.error is not None:
                    raise r.error
        return out

    def encode_windows(self, windows: torch.Tensor) -> npt.NDArray[np.float32]:
        """Encoder inputs (B, T, F) -> (B, D) embeddings, as ``Embedder.encode_windows``;
        concurrent live sessions' windows are encoded together (on CPU a batch of one GE2E
        window costs twice what each window of a batch of eight does). Served before the
        queued recordings: a window is a few ms of work that a session's events wait for.
        Raises BusyError as :meth:`embed`."""
        job = _WindowJob(windows)
        with self._cond:
            if self._closed:
                raise BusyError("the server is shutting down")
            self._windows.append(job)
            self._cond.notify_all()
        try:
            return job.future.result(timeout=self.timeout_s)
        except TimeoutError:
            job.future.cancel()
            raise BusyError(
                f"the server could not embed the audio within {self.timeout_s:g} s; try again later"
            ) from None

    def iter_embed(
        self,
        sources: Iterable[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        skip: Callable[[int, str], bool] | None = None,
        head_samples: int = 0,
    ) -> Iterator[tuple[int, EmbeddedAudio]]:
        """Streaming embedding (manifest enrollment) runs on the model directly, unbatched."""
        yield from self._inner.iter_embed(
            sources,
            sample_rate=sample_rate,
            batch_size=batch_size,
            skip=skip,
            head_samples=head_samples,
        )

    # --- the batching thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._windows and not self._closed:
                    self._cond.wait()
                if self._windows:
                    windows, self._windows = self._windows, []
                else:
                    windows = []
            if windows:
                self._encode_windows(windows)
                continue
            with self._cond:
                if not self._queue:
                    if self._closed:
                        return  # closed and drained
                    continue
                deadline = time.monotonic() + self.max_wait_s
                while (
                    self._expected > 0
                    and _files(self._queue) < self.max_files
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
                jobs = _take(self._queue, self.max_files)
            self._embed_jobs(jobs)

    def _embed_jobs(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        by_rate: dict[tuple[int | None, int], list[_Job]] = {}
        for job in jobs:
            by_rate.setdefault((job.sample_rate, job.head_samples), []).append(job)
        for (rate, head_samples), group in by_rate.items():
            started = time.monotonic()
            items = [item for job in group for item in job.items]
            owner: list[tuple[_Job, int]] = [
                (job, i) for job in group for i in range(len(job.items))
            ]

            def skip(index: int, sha256: str, owner: list[tuple[_Job, int]] = owner) -> bool:
                job, position = owner[index]
                return job.skip is not None and job.skip(position, sha256)

            try:
                embedded = self._inner.embed(
                    items, sample_rate=rate, skip=skip, head_samples=head_samples
                )
            except BaseException as exc:  # every waiting request gets the failure
                log.exception("embedding a batch of %d recordings failed", len(items))
                _fail([job.future for job in group], exc)
                continue
            _hand_out([(job.future, len(job.items)) for job in group], embedded)
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(items), len(group), time.monotonic() - started))

    def _encode_windows(self, jobs: list[_WindowJob]) -> None:
        import torch

        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            out = self._inner.encode_windows(torch.cat([job.windows for job in jobs]))
        except BaseException as exc:  # every waiting session gets the failure
            log.exception("encoding %d sessions' windows failed", len(jobs))
            _fail([job.future for job in jobs], exc)
            return
        _hand_out([(job.future, job.windows.shape[0]) for job in jobs], out)


def _fail(futures: Sequence[Future[Any]], exc: BaseException) -> None:
    """Give every waiting future ``exc``; re-raise it unless it is an Exception (a
    KeyboardInterrupt or SystemExit still stops the worker thread)."""
    for future in futures:
        future.set_exception(exc)
    if not isinstance(exc, Exception):
        raise exc


def _hand_out(futures: Sequence[tuple[Future[Any], int]], results: Any) -> None:
    """Give each future its consecutive slice of ``results`` (its count of rows), in order."""
    offset = 0
    for future, count in futures:
        future.set_result(results[offset : offset + count])
        offset += count


def _files(queue: Sequence[_Job]) -> int:
    return sum(len(job.items) for job in queue)


def _take(queue: list[_Job], max_files: int) -> list[_Job]:
    """Remove and return the first jobs of ``queue`` holding at most ``max_files``
    recordings (at least one job, however large)."""
    taken: list[_Job] = []
    count = 0
    while queue and (not taken or count + len(queue[0].items) <= max_files):
        job = queue.pop(0)
        taken.append(job)
        count += len(job.items)
    return taken


def _relabelled(item: AudioInput, result: EmbeddedAudio) -> EmbeddedAudio:
    """``result`` named after the upload's label rather than its temporary path."""
    if not isinstance(item, Upload):
        return result
    error = result.error
    if error is not None:
        error = type(error)(item.label, error.reason)
    return replace(result, source=item.label, error=error)
