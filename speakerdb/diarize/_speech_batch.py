"""The speech detector's network shared by concurrent streams: chunks that several threads
hand in at the same time run through silero in one pass.

A live session asks silero for the 3-4 frames of each 100 ms chunk it receives. Alone,
such a call is a dozen small torch operations whose fixed cost dominates (about 2 ms of CPU
for 3 frames on this 2-core machine, 0.4 ms per stream when 32 streams' frames go through
together; benchmarks/live_vad_batch.py measures it). :class:`BatchedSpeechNet`
collects the calls of all threads: a caller that finds no pass running runs one over every
call queued by then (its own included), after a short wait for more when many sessions
are calling (see ``max_wait_s``); callers that arrive meanwhile wait and the next pass, run
by one of them, takes them all. So a lone caller never waits for anybody, and under load
the passes grow with the queue, as the service's batcher does for window embeddings. Each
stream's state is carried exactly (:meth:`SileroVAD.probabilities_many`).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._silero import SileroVAD
from speakerdb.model._embedder import single_threaded_torch

if TYPE_CHECKING:
    import torch

__all__ = ["BatchedSpeechNet"]

_State = tuple["torch.Tensor", "torch.Tensor"]


@dataclass
class _Call:
    chunks: npt.NDArray[np.float32]
    state: _State | None
    answer: tuple[npt.NDArray[np.float32], _State] | None = None
    failure: BaseException | None = None
    done: bool = False


class BatchedSpeechNet:
    """``probabilities(chunks, state)`` as :meth:`SileroVAD.probabilities` ((n, 576)
    float32 context + chunk -> (n,) float32 speech probabilities and the state after the
    last chunk), safe to call from any number of threads at once: concurrent calls share
    one pass of the network (see the module docstring). A failure of a pass is raised in
    every call it held. ``passes`` / ``calls``: counters (a pass holds calls / passes on
    average).

    max_wait_s: how long a pass that starts waits for more calls (until ``max_calls`` are
    queued), only when the last second brought at least one call per ``max_wait_s`` (so a
    lone session never waits; 10 sessions or more do). Callers out of step then share
    passes: with 32 real-time sessions at random phases, 10 ms made the passes 6.4 calls
    instead of 2.0 and halved the detector's CPU, for 10 ms more on each chunk's median
    (benchmarks/live_vad_batch.py --wait-ms, docs/live.md). 0: never wait.
    """

    _cached: BatchedSpeechNet | None = None
    _cached_lock = threading.Lock()

    def __init__(
        self, net: SileroVAD | None = None, max_wait_s: float = 0.01, max_calls: int = 64
    ) -> None:
        self._net = net or SileroVAD.shared()
        self.max_wait_s = max_wait_s
        self.max_calls = max(1, max_calls)
        self._arrivals: collections.deque[float] = collections.deque()  # the last second's
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._running = False
        self.passes = 0
        self.calls = 0

    @classmethod
    def shared(cls) -> BatchedSpeechNet:
        """One per process, so that every live session in it shares the passes."""
        with cls._cached_lock:
            if cls._cached is None:
                cls._cached = cls()
            return cls._cached

    def probabilities(
        self, chunks: npt.NDArray[np.float32], state: _State | None
    ) -> tuple[npt.NDArray[np.float32], _State]:
        if chunks.ndim != 2 or chunks.shape[0] == 0:
            raise ValueError(f"chunks must be (n >= 1, 576), not {chunks.shape}")
        call = _Call(chunks, state)
        with self._cond:
            self._queue.append(call)
            now = time.monotonic()
            self._arrivals.append(now)
            while self._arrivals[0] < now - 1.0:
                self._arrivals.popleft()
            if len(self._queue) >= self.max_calls:
                self._cond.notify_all()  # a pass gathering calls need not wait longer
            while self._running and not call.done:
                self._cond.wait()
            if not call.done:  # no pass is running: this thread runs the next one
                self._running = True
                # Gather only when the last second's calls say others will come within
                # the wait (a lone session's calls, ten a second, never wait).
                wait = self.max_wait_s if len(self._arrivals) * self.max_wait_s >= 1 else 0.0
                deadline = time.monotonic() + wait
                while (
                    len(self._queue) < self.max_calls
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
                batch, self._queue = self._queue, []
        if not call.done:
            self._run(batch)
        if call.failure is not None:
            raise call.failure
        assert call.answer is not None
        return call.answer

    def _run(self, batch: list[_Call]) -> None:
        try:
            with single_threaded_torch():  # small tensors: a second thread only adds barriers
                answers = self._net.probabilities_many([(c.chunks, c.state) for c in batch])
            for call, answer in zip(batch, answers, strict=True):
                call.answer = answer
        except BaseException as exc:  # every call of the pass gets the failure
            for call in batch:
                call.failure = exc
        finally:
            with self._cond:
                for call in batch:
                    call.done = True
                self._running = False
                self.passes += 1
                self.calls += len(batch)
                self._cond.notify_all()
