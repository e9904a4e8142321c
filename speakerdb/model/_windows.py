"""Partial-utterance windows of the GE2E model.

An utterance is cut into 1.6 s windows (160 mel frames) started every 77 frames (1.3 windows
per second); the last window is kept when at least 75 % of it is covered by audio (an
utterance always has at least one window). The utterance embedding is the normalised mean
of the window embeddings.
"""

from __future__ import annotations

import math

from speakerdb.model._preprocess import MEL_HOP

__all__ = ["WINDOW_FRAMES", "window_starts"]

WINDOW_FRAMES = 160  # mel frames in one window (1.6 s)
WINDOWS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75


def window_starts(n_samples: int) -> tuple[list[int], int]:
    """Start frames of the windows of an utterance of ``n_samples`` samples (16 kHz).

    Returns ``(starts, padded_length)``: the first mel frame of each window, and the number of
    samples the waveform must be zero-padded to (never less than ``n_samples``) so that every
    window lies on computed audio.
    """
    frame_step = round((16_000 / WINDOWS_PER_SECOND) / MEL_HOP)  # 77 frames
    n_frames = math.ceil((n_samples + 1) / MEL_HOP)
    steps = max(1, n_frames - WINDOW_FRAMES + frame_step + 1)
    starts = list(range(0, steps, frame_step))
    window_samples = WINDOW_FRAMES * MEL_HOP
    coverage = (n_samples - starts[-1] * MEL_HOP) / window_samples
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    padded_length = max(n_samples, (starts[-1] + WINDOW_FRAMES) * MEL_HOP)
    return starts, padded_length
