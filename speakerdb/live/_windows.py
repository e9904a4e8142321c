"""A segment's GE2E window embeddings, computed once each as the speech arrives.

GE2E embeds an utterance as the normalised mean of its 1.6 s windows (one every 0.77 s of
speech). A session that re-embedded the last seconds of speech for every speaker-change
check, and the whole segment for every re-scoring, encoded each stretch of speech up to a
dozen times. :class:`SegmentWindows` instead cuts the segment's speech frames (the speech
detector's, concatenated) into such windows (every :data:`WINDOW_HOP_SAMPLES`) as they fill
up and encodes each window once; a change check is the mean of the last few window
embeddings, and a re-scoring's *estimate* the mean of all of them (the last minute), at no
encoder cost.

The windows are not the offline answer's: each window is volume-normalised on its own audio
(the engine normalises the whole recording, which a stream does not have yet) and the speech
is the speech detector's (the engine trims with WebRTC VAD). So estimates only say *when*
the offline rule needs to be asked again (:mod:`speakerdb.live._session`); decisions and the
final answer stay the engine's own on the segment's audio.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from speakerdb.model._audio import SAMPLE_RATE
from speakerdb.model._embedder import Embedder, single_threaded_torch
from speakerdb.model._preprocess import MEL_HOP, mel_from_power, power_spectrogram, volume_gain
from speakerdb.model._windows import WINDOW_FRAMES

__all__ = [
    "WINDOW_HOP_SAMPLES",
    "WINDOW_SAMPLES",
    "SegmentWindows",
    "WindowEncoder",
    "window_encoder",
    "window_features",
]

WINDOW_SAMPLES = WINDOW_FRAMES * MEL_HOP  # 25600 samples: 1.6 s at 16 kHz
# Half the engine's window step (77 mel frames, 0.77 s), in whole frames: 0.38 s. A change
# check then comes every 0.38 s of speech and averages 6 overlapping windows (3.5 s of
# speech; 5 cover the same 3.1 s as 3 windows 0.77 s apart, the re-embedding check looked
# every 0.5 s); at 0.77 s steps the checks were noisier (benchmarks/live_change_choice.py:
# false changes on read speech). Twice the windows: 2.6 window encodings per second of speech.
WINDOW_HOP_SAMPLES = 38 * MEL_HOP


@dataclass(frozen=True)
class WindowEncoder:
    """The model's encoder for a session's windows: ``encode(mels)`` takes (B, 160, 40)
    float32 mel power windows and returns (B, D) float32 unit-norm window embeddings
    (GE2E's network; the server's shared batcher may serve it)."""

    encode: Callable[[torch.Tensor], npt.NDArray[np.float32]]


def window_features(samples: npt.NDArray[np.float32]) -> torch.Tensor:
    """One window's (WINDOW_SAMPLES,) float32 16 kHz speech -> its (160, 40) float32 mel
    power frames, volume-normalised on the window's own audio (GE2E's -30 dBFS, increase
    only) and centred with zero padding as the engine's front end does."""
    gain = volume_gain(samples)
    if gain is not None:
        samples = samples * gain
    with torch.inference_mode():
        power = power_spectrogram(torch.from_numpy(np.ascontiguousarray(samples)))
        return mel_from_power(power)[:WINDOW_FRAMES]


class SegmentWindows:
    """The window embeddings of one segment's speech, in order.

    ``push(samples, start)`` adds a speech frame (its (k,) float32 16 kHz samples and its
    start, seconds since the session began); windows it completes are encoded at once (one
    encoder call per push, however many). ``vectors`` holds the last ``keep`` windows'
    (D,) embeddings with their start times. Not thread-safe (one session's feed at a time).
    """

    def __init__(self, encoder: WindowEncoder, keep_seconds: float) -> None:
        self._encoder = encoder
        self._buffer = np.zeros(0, np.float32)  # speech samples from ``_offset`` on
        self._offset = 0  # speech-sample position of the buffer's first sample
        self._pushed = 0  # speech samples pushed so far
        self._next = 0  # speech-sample position where the next window starts
        # (speech-sample position, session time) of each frame start still needed
        self._starts: collections.deque[tuple[int, float]] = collections.deque()
        keep = max(1, math.ceil(keep_seconds * SAMPLE_RATE / WINDOW_HOP_SAMPLES))
        self.vectors: collections.deque[tuple[float, npt.NDArray[np.float32]]] = collections.deque(
            maxlen=keep
        )
        self.encoded = 0  # windows encoded so far (all of them, not only those kept)

    @property
    def speech_seconds(self) -> float:
        """Seconds of speech pushed so far."""
        return self._pushed / SAMPLE_RATE

    def push(self, samples: npt.NDArray[np.float32], start: float) -> int:
        """Add one speech frame; returns how many new windows were encoded."""
        self._starts.append((self._pushed, start))
        self._buffer = np.concatenate([self._buffer, samples])
        self._pushed += samples.size
        features: list[torch.Tensor] = []
        times: list[float] = []
        while self._next + WINDOW_SAMPLES <= self._pushed:
            first = self._next - self._offset
            with single_threaded_torch():  # one short window: threads only add barriers
                features.append(window_features(self._buffer[first : first + WINDOW_SAMPLES]))
            times.append(self._time_of(self._next))
            self._next += WINDOW_HOP_SAMPLES
        # Only the samples a later window needs are kept.
        drop = self._next - self._offset
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._offset = self._next
        while len(self._starts) > 1 and self._starts[1][0] <= self._next:
            self._starts.popleft()
        if not features:
            return 0
        out = self._encoder.encode(torch.stack(features))
        for time, vector in zip(times, out, strict=True):
            self.vectors.append((time, np.asarray(vector, np.float32)))
        self.encoded += len(features)
        return len(features)

    def _time_of(self, position: int) -> float:
        """Session time (s) of a speech-sample position: the start of the frame holding it
        plus the offset into that frame (frames are contiguous speech within a frame)."""
        best = self._starts[0]
        for item in self._starts:
            if item[0] > position:
                break
            best = item
        return best[1] + (position - best[0]) / SAMPLE_RATE

    def mean(self, last: int | None = None, since: float | None = None) -> npt.NDArray[np.float32]:
        """The (D,) unit-norm mean direction of the last ``last`` kept windows (all when
        None) that start at or after ``since`` (seconds; None: any). Raises ValueError when
        there is no such window."""
        chosen = [v for t, v in self.vectors if since is None or t >= since]
        if last is not None:
            chosen = chosen[-last:]
        if not chosen:
            raise ValueError("no window embedding yet")
        centre: npt.NDArray[np.float32] = np.stack(chosen).mean(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(centre))
        return centre / np.float32(norm) if norm > 0 else centre

    def count(self, since: float | None = None) -> int:
        """Windows kept that start at or after ``since`` (seconds; None: all kept)."""
        return sum(1 for t, _ in self.vectors if since is None or t >= since)


def window_encoder(model: Embedder) -> WindowEncoder | None:
    """``model``'s window encoder (:meth:`Embedder.encode_windows`; a server's batcher
    encodes concurrent sessions' windows together) as a session's :class:`WindowEncoder`,
    or None when the model is not GE2E (other families embed whole utterances: their
    sessions re-embed audio)."""
    if model.encoder.family != "ge2e":
        return None
    return WindowEncoder(model.encode_windows)
