"""Speech activity: one decision per 30 ms frame, from WebRTC VAD and the frame's energy.

WebRTC VAD (the detector GE2E's front end uses) adapts to the background noise it has
heard; it is run over the whole recording block by block with one detector. Frames more
than :data:`ENERGY_FLOOR_DB` below the loudest frames heard so far are silence whatever the
detector says: it calls low-level breathing and room noise voiced in quiet recordings.
The raw decisions are then smoothed: short silences inside speech are closed and isolated
blips of "speech" removed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from speakerdb.model._audio import SAMPLE_RATE

__all__ = ["FRAME_SAMPLES", "FRAME_SECONDS", "SpeechDetector", "smooth_speech"]

FRAME_SECONDS = 0.03
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_SECONDS)  # 480
VAD_MODE = 2
"""WebRTC aggressiveness (0-3). Mode 3 drops the quiet ends of words; 2 keeps them."""
ENERGY_FLOOR_DB = 45.0
"""A frame this far (dB) below the 95th percentile of frame energies heard so far is silence."""
MIN_PAUSE_SECONDS = 0.3
"""Silences shorter than this inside speech are closed (the pauses between words)."""
MIN_SPEECH_SECONDS = 0.2
"""Shorter runs of speech frames (clicks, breaths) are dropped."""
_INT16_MAX = 32767


class SpeechDetector:
    """Feed consecutive blocks of 16 kHz float32 samples; get one raw decision per frame.

    ``push(block)`` returns the (k,) bool decisions of the whole frames completed by the
    block; samples of an incomplete frame are kept for the next block. ``finish()`` decides
    the last, partial frame (zero-padded).
    """

    def __init__(self) -> None:
        import _webrtcvad  # type: ignore[import-not-found]

        self._vad = _webrtcvad
        self._handle = _webrtcvad.create()
        _webrtcvad.init(self._handle)
        _webrtcvad.set_mode(self._handle, VAD_MODE)
        self._rest = np.zeros(0, dtype=np.float32)
        self._loud_db = -np.inf  # running estimate of the loud (speech) frame level

    def push(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        samples = np.concatenate([self._rest, block]) if self._rest.size else block
        whole = samples.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._rest = samples[whole:].copy()
        return self._decide(samples[:whole])

    def finish(self) -> npt.NDArray[np.bool_]:
        if self._rest.size == 0:
            return np.zeros(0, dtype=bool)
        last = np.pad(self._rest, (0, FRAME_SAMPLES - self._rest.size))
        self._rest = np.zeros(0, dtype=np.float32)
        return self._decide(last)

    def _decide(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        n = samples.size // FRAME_SAMPLES
        if n == 0:
            return np.zeros(0, dtype=bool)
        frames = samples[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        energy_db = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
        self._loud_db = max(self._loud_db, float(np.percentile(energy_db, 95)))
        pcm = np.round(np.clip(frames, -1.0, 1.0) * _INT16_MAX).astype("<i2")
        voiced = np.fromiter(
            (
                self._vad.process(self._handle, SAMPLE_RATE, row.tobytes(), FRAME_SAMPLES)
                for row in pcm
            ),
            dtype=bool,
            count=n,
        )
        return np.asarray(voiced & (energy_db > self._loud_db - ENERGY_FLOOR_DB), dtype=bool)


def smooth_speech(
    raw: npt.NDArray[np.bool_],
    min_pause: float = MIN_PAUSE_SECONDS,
    min_speech: float = MIN_SPEECH_SECONDS,
) -> npt.NDArray[np.bool_]:
    """(n,) bool raw frame decisions -> (n,) bool speech mask: pauses shorter than
    ``min_pause`` seconds between speech closed, then runs shorter than ``min_speech``
    seconds removed."""
    mask = raw.copy()
    gap = round(min_pause / FRAME_SECONDS)
    for start, end in runs(~mask):
        if start > 0 and end < mask.size and end - start < gap:
            mask[start:end] = True
    short = round(min_speech / FRAME_SECONDS)
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
