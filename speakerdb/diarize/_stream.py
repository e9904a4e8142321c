"""A recording as a stream of 16 kHz blocks, so that diarization holds only a window's worth
of audio at a time whatever the recording's length.

Decoding, limits and resampling are the engine's (:func:`speakerdb.model._audio.open_source`
and :class:`speakerdb.model._resampling.StreamResampler`, GE2E's resampler as in
:func:`~speakerdb.model._audio.load_audio`): the same files are accepted and refused, with
the same errors, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from speakerdb.errors import NoSpeechError
from speakerdb.model._audio import (
    SAMPLE_RATE,
    AudioInput,
    DecodedStream,
    downmix,
    open_source,
)

__all__ = ["BLOCK_SECONDS", "AudioStream", "open_stream"]

BLOCK_SECONDS = 30.0
"""Seconds of audio handed on at once (about 2 MB of float32 at 16 kHz)."""


class AudioStream:
    """A recording as consecutive blocks of (n,) float32 mono samples at 16 kHz.

    ``source``: the path as given or ``<array>``; ``duration``: seconds, when the container
    declares it (None otherwise, e.g. some MP3/M4A). Each :meth:`blocks` decodes anew; it raises
    AudioError subclasses for corrupt data, non-finite samples, a recording past the
    duration limit (TooLongError) or one that is all digital zero (NoSpeechError).
    """

    def __init__(self, source: AudioInput, sample_rate: int | None = None) -> None:
        self._input, self._sample_rate = source, sample_rate
        self._opened: DecodedStream | None = open_source(source, sample_rate)
        self.source = self._opened.source
        frames = self._opened.frames
        self.duration: float | None = frames / self._opened.rate if frames else None

    def blocks(self, block_seconds: float = BLOCK_SECONDS) -> Iterator[npt.NDArray[np.float32]]:
        """Yield (n,) float32 blocks at 16 kHz, about ``block_seconds`` each."""
        from speakerdb.model._resampling import GE2E_RESAMPLING, StreamResampler

        # The first pass uses the stream opened (and so checked) by the constructor.
        decoded = self._opened or open_source(self._input, self._sample_rate)
        self._opened = None
        size = max(1, int(block_seconds * SAMPLE_RATE))
        resampler = StreamResampler(decoded.rate, SAMPLE_RATE, GE2E_RESAMPLING)
        pending: list[npt.NDArray[np.float32]] = []
        held = 0
        heard = False
        for raw in decoded.blocks:
            part = resampler.feed(downmix(raw))
            heard = heard or bool(np.any(part))
            pending.append(part)
            held += part.size
            if held >= size:
                yield np.concatenate(pending)
                pending, held = [], 0
        last = resampler.finish()
        heard = heard or bool(np.any(last))
        pending.append(last)
        if held + last.size:
            yield np.concatenate(pending)
        if not heard:
            raise NoSpeechError(self.source, "is digital silence")


def open_stream(source: AudioInput, sample_rate: int | None = None) -> AudioStream:
    """Check that ``source`` can be decoded (exists, is audio, has a usable rate, is within
    the duration limit as far as its header tells) and return its stream. Raises the
    AudioError subclasses of :func:`speakerdb.model._audio.load_audio`."""
    return AudioStream(source, sample_rate)
