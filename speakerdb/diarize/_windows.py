"""Short overlapping windows of a recording, embedded while the recording streams.

Windows of ``window`` seconds start every ``hop`` seconds over the whole recording; those
with some confident speech (:func:`is_candidate`) are embedded through the public
:meth:`Embedder.embed` on in-memory arrays (so every model family works; the engine batches
all windows of a block together). Only the window embeddings, their times and the
per-frame speech probabilities are kept: memory grows by about 1 KB per window (256
float32) and 4 bytes per 32 ms frame, whatever the recording's length. Which of them are
clustered is decided later, from the speech mask (:func:`speech_windows`), so that the
mask's settings can change without embedding again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._speech import FRAME_SAMPLES, FRAME_SECONDS, SpeechDetector
from speakerdb.diarize._stream import AudioStream
from speakerdb.errors import UsageError
from speakerdb.model._audio import SAMPLE_RATE

if TYPE_CHECKING:
    from speakerdb.model._embedder import Embedder

__all__ = [
    "CONFIDENT_SPEECH",
    "DEFAULT_HOP",
    "DEFAULT_WINDOW",
    "WindowEmbeddings",
    "embed_windows",
    "is_candidate",
    "speech_windows",
]

DEFAULT_WINDOW = 1.5
"""Seconds per window: long enough for a usable voiceprint, short enough to sit inside a turn.
Against 2 s windows every 0.75 s: as good on the development conversations (turns of
5-20 s), far better where turns last 1-4 s (pyannote's sample conversation: DER 6.5 %
against 44 % with the number of speakers given), and cheaper (one GE2E window each)."""
DEFAULT_HOP = 0.5
"""Seconds between window starts: each moment of speech is seen by three windows."""
MIN_SPEECH_SHARE = 0.3
"""A window is a speech window when at least this share of its frames is speech."""
CONFIDENT_SPEECH = 0.5
"""Speech probability from which a frame is confident speech (silero-vad's default
threshold). Only windows with :data:`MIN_SPEECH_SHARE` of frames both in the speech mask
and confident are clustered (:func:`speech_windows`)."""


def is_candidate(probabilities: npt.NDArray[np.float32]) -> bool:
    """Whether a window whose frames have these (m,) probabilities is embedded: at least
    half of :data:`MIN_SPEECH_SHARE` of them confident. Half, so that rounding at the
    window's edges never skips a window :func:`speech_windows` could choose, whatever the
    mask's settings (a window it chooses has at least the full share confident)."""
    if probabilities.size == 0:
        return False
    share = float(np.count_nonzero(probabilities >= CONFIDENT_SPEECH)) / probabilities.size
    return share >= MIN_SPEECH_SHARE / 2


@dataclass(frozen=True)
class WindowEmbeddings:
    """What diarization keeps of a recording.

    starts / ends: (n,) float64 window times in seconds; vectors: (n, D) float32 unit-norm
    window embeddings; speech: (f,) float32 speech probability per 32 ms frame; duration:
    the recording's length in seconds.
    """

    starts: npt.NDArray[np.float64]
    ends: npt.NDArray[np.float64]
    vectors: npt.NDArray[np.float32]
    speech: npt.NDArray[np.float32]
    duration: float

    def select(self, keep: npt.NDArray[np.bool_]) -> WindowEmbeddings:
        """Only the windows where ``keep`` ((n,) bool) is True."""
        return WindowEmbeddings(
            self.starts[keep], self.ends[keep], self.vectors[keep], self.speech, self.duration
        )


def speech_windows(
    embedded: WindowEmbeddings, mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """(n,) bool: the windows at least :data:`MIN_SPEECH_SHARE` of whose frames are speech
    in the (f,) bool frame ``mask``."""
    if embedded.starts.size == 0:
        return np.zeros(0, dtype=bool)
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    first = np.clip(np.floor(embedded.starts / FRAME_SECONDS).astype(np.int64), 0, mask.size)
    last = np.clip(np.ceil(embedded.ends / FRAME_SECONDS).astype(np.int64), 0, mask.size)
    last = np.maximum(last, np.minimum(first + 1, mask.size))
    frames = np.maximum(last - first, 1)
    share = (cumulative[last] - cumulative[first]) / frames
    return np.asarray(share >= MIN_SPEECH_SHARE, dtype=bool)


def embed_windows(
    stream: AudioStream,
    model: Embedder,
    *,
    window: float = DEFAULT_WINDOW,
    hop: float = DEFAULT_HOP,
    progress: Callable[[float, float], None] | None = None,
) -> WindowEmbeddings:
    """Decode ``stream`` block by block, detect speech and embed its speech windows.

    progress: called as ``progress(seconds_done, total_seconds)`` after each block (the
    total is the declared duration, or the seconds done when unknown).
    Raises UsageError for a bad window/hop, AudioError subclasses from decoding.
    """
    if not 0.5 <= window <= 10.0:
        raise UsageError(f"window must be between 0.5 and 10 seconds, not {window}")
    if not 0.1 <= hop <= window:
        raise UsageError(f"hop must be between 0.1 s and the window ({window} s), not {hop}")
    win = round(window * SAMPLE_RATE)
    step = round(hop * SAMPLE_RATE)
    detector = SpeechDetector()
    decided: list[npt.NDArray[np.float32]] = []  # consolidated into one array per block
    total = 0
    window_starts: list[int] = []  # absolute sample index of every window handed out

    def heard(start: int, end: int) -> bool:
        first, last = start // FRAME_SAMPLES, max(start // FRAME_SAMPLES + 1, end // FRAME_SAMPLES)
        return is_candidate(decided[0][first:last] if decided else np.zeros(0, np.float32))

    def windows() -> Iterator[npt.NDArray[np.float32]]:
        """The speech windows, produced while the stream is decoded; the engine pulls them
        a few at a time, so decoding, speech detection and encoding overlap."""
        nonlocal total, decided
        buffer = np.zeros(0, dtype=np.float32)
        buffer_start = 0  # absolute sample index of buffer[0]
        next_start = 0
        blocks = stream.blocks()
        final = False
        while not final:
            block = next(blocks, None)
            if block is None:
                final = True
                decided.append(detector.finish())
            else:
                total += block.size
                buffer = np.concatenate([buffer, block]) if buffer.size else block
                decided.append(detector.push(block))
            decided = [np.concatenate(decided)] if len(decided) > 1 else decided
            end_available = buffer_start + buffer.size
            while next_start + win <= end_available or (
                final and next_start + win // 2 < end_available
            ):
                end = min(next_start + win, end_available)
                if heard(next_start, end):
                    window_starts.append(next_start)
                    yield buffer[next_start - buffer_start : end - buffer_start].copy()
                next_start += step
            drop = min(next_start, end_available) - buffer_start
            if drop > 0:
                buffer = buffer[drop:]
                buffer_start += drop
            if progress is not None and block is not None:
                done = total / SAMPLE_RATE
                progress(done, max(done, stream.duration or done))

    starts: list[int] = []
    vectors: list[npt.NDArray[np.float32]] = []
    found: dict[int, npt.NDArray[np.float32]] = {}
    for index, result in model.iter_embed(windows(), sample_rate=SAMPLE_RATE):
        # Windows the engine finds no (or too little) speech in are not speech.
        if result.vector is not None:
            found[index] = result.vector
    for index in sorted(found):
        starts.append(window_starts[index])
        vectors.append(found[index])
    speech = decided[0] if decided else np.zeros(0, np.float32)
    dimension = model.dimension
    return WindowEmbeddings(
        starts=np.array(starts, dtype=np.float64) / SAMPLE_RATE,
        ends=np.minimum(np.array(starts, dtype=np.float64) + win, total) / SAMPLE_RATE,
        vectors=np.stack(vectors) if vectors else np.zeros((0, dimension), np.float32),
        speech=speech[: -(-total // FRAME_SAMPLES)],
        duration=total / SAMPLE_RATE,
    )
