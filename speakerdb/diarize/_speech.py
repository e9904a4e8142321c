"""Speech activity: a speech probability per 32 ms frame from a trained detector (silero-vad),
turned into a speech mask by hysteresis.

Silero's network (:mod:`._silero`) carries its state from block to block, so a recording
streamed in blocks gets the probabilities it would get read whole. The mask: a run of
speech starts where the probability reaches ``onset`` and lasts while it stays at or above
``offset`` (below onset: the quiet ends of words stay in); pauses shorter than
``min_pause`` inside speech are closed and runs shorter than ``min_speech`` dropped.

The four constants are chosen from the development conversations by leave-one-set-out
(``benchmarks/diarize_devsets.py``; docs/diarization.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._silero import CHUNK_SAMPLES, CONTEXT_SAMPLES, SileroVAD
from speakerdb.errors import UsageError
from speakerdb.model._audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

__all__ = [
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "SpeechDetector",
    "SpeechNet",
    "SpeechSettings",
    "runs",
    "speech_mask",
]

FRAME_SAMPLES = CHUNK_SAMPLES  # 512
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE  # 0.032


@dataclass(frozen=True)
class SpeechSettings:
    """Hysteresis on speech probabilities: onset / offset in (0, 1), offset <= onset;
    min_pause / min_speech in seconds (see the module docstring). Defaults: chosen on both
    development sets pooled; the same values are chosen on each set alone, so the
    leave-one-set-out figures in docs/diarization.md are these values' on the other set.
    They are permissive (they keep the quiet starts and ends of words); the windows that
    are clustered are chosen from confident speech only (see
    :data:`speakerdb.diarize._windows.CONFIDENT_SPEECH`)."""

    onset: float = 0.1
    offset: float = 0.05
    min_pause: float = 0.6
    min_speech: float = 0.05

    def check(self) -> None:
        if not 0.0 < self.offset <= self.onset < 1.0:
            raise UsageError(
                f"speech thresholds need 0 < offset <= onset < 1, not onset {self.onset} "
                f"and offset {self.offset}"
            )
        if self.min_pause < 0 or self.min_speech < 0:
            raise UsageError("min_pause and min_speech must be >= 0 seconds")


class SpeechNet(Protocol):
    """What computes the probabilities: :class:`SileroVAD`, or a
    :class:`~speakerdb.diarize._speech_batch.BatchedSpeechNet` shared by concurrent streams.
    (n, 576) float32 context + chunk and the stream's state (None: a new stream) -> (n,)
    float32 speech probabilities and the state after the last chunk."""

    def probabilities(
        self,
        chunks: npt.NDArray[np.float32],
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[npt.NDArray[np.float32], tuple[torch.Tensor, torch.Tensor]]: ...


class SpeechDetector:
    """Feed consecutive blocks of 16 kHz float32 samples; get one speech probability per
    32 ms frame. ``net``: who runs the network (default: silero in this thread).

    ``push(block)`` returns the (k,) float32 probabilities of the whole frames completed by
    the block; samples of an incomplete frame are kept for the next block. ``finish()``
    decides the last, partial frame (zero-padded). Raises ModelError when silero-vad's
    weights cannot be read.
    """

    def __init__(self, net: SpeechNet | None = None) -> None:
        self._net: SpeechNet = net if net is not None else SileroVAD.shared()
        self._rest = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    def push(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        samples = np.concatenate([self._rest, block]) if self._rest.size else block
        whole = samples.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._rest = samples[whole:].copy()
        return self._decide(samples[:whole])

    def finish(self) -> npt.NDArray[np.float32]:
        if self._rest.size == 0:
            return np.zeros(0, dtype=np.float32)
        last = np.pad(self._rest, (0, FRAME_SAMPLES - self._rest.size))
        self._rest = np.zeros(0, dtype=np.float32)
        return self._decide(last)

    def _decide(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n = samples.size // FRAME_SAMPLES
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        # Each frame with the CONTEXT_SAMPLES before it (the previous block's for the first).
        joined = np.concatenate([self._context, samples.astype(np.float32, copy=False)])
        starts = np.arange(n) * FRAME_SAMPLES
        chunks = joined[starts[:, None] + np.arange(FRAME_SAMPLES + CONTEXT_SAMPLES)]
        self._context = joined[-CONTEXT_SAMPLES:].copy()
        probabilities, self._state = self._net.probabilities(chunks, self._state)
        return probabilities


def speech_mask(
    probabilities: npt.NDArray[np.float32], settings: SpeechSettings | None = None
) -> npt.NDArray[np.bool_]:
    """(n,) float32 frame probabilities -> (n,) bool speech mask: runs at or above
    ``offset`` that reach ``onset`` somewhere, pauses shorter than ``min_pause`` closed,
    then runs shorter than ``min_speech`` removed."""
    settings = settings or SpeechSettings()
    mask = np.zeros(probabilities.size, dtype=bool)
    for start, end in runs(probabilities >= settings.offset):
        if probabilities[start:end].max() >= settings.onset:
            mask[start:end] = True
    gap = round(settings.min_pause / FRAME_SECONDS)
    for start, end in runs(~mask):
        if start > 0 and end < mask.size and end - start < gap:
            mask[start:end] = True
    short = round(settings.min_speech / FRAME_SECONDS)
    for start, end in runs(mask):
        if end - start < short:
            mask[start:end] = False
    return mask


def runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """The maximal runs of True in a (n,) bool array, as [start, end) index pairs."""
    if mask.size == 0:
        return []
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
