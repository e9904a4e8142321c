"""Where a live session's chunks come from outside Python: raw PCM byte streams (stdin, a
WebSocket's binary frames) and audio files played as if live.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb.errors import InvalidAudioError, UsageError
from speakerdb.model._audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, downmix, open_source

__all__ = ["ENCODINGS", "PcmDecoder", "file_chunks"]

ENCODINGS: dict[str, np.dtype[Any]] = {
    "pcm_s16le": np.dtype("<i2"),
    "pcm_f32le": np.dtype("<f4"),
}
"""Raw PCM encodings a byte stream may carry (little-endian, mono, interleaving none)."""
_ALIASES = {"s16le": "pcm_s16le", "f32le": "pcm_f32le"}


class PcmDecoder:
    """Raw little-endian PCM bytes -> chunks for :meth:`LiveSession.feed`.

    encoding: "pcm_s16le" / "pcm_f32le" (or "s16le" / "f32le"); sample_rate: Hz, 8-768 kHz;
    channels: 1 (mono only: a call's channels are separate speakers). ``decode(data)``
    returns the (n,) int16 or float32 samples of ``data``, whose length must be a whole
    number of samples (else InvalidAudioError: a frame of the wrong size). Raises UsageError
    for an unknown encoding, InvalidAudioError for a rate or channel count it cannot take.
    """

    def __init__(self, encoding: str, sample_rate: int, channels: int = 1) -> None:
        name = _ALIASES.get(encoding, encoding)
        if name not in ENCODINGS:
            raise UsageError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
            raise UsageError(f"sample_rate must be an integer, not {sample_rate!r}")
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise InvalidAudioError(
                "<stream>",
                f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            )
        if channels != 1:
            raise InvalidAudioError("<stream>", f"mono audio only, not {channels} channels")
        self.encoding = name
        self.dtype = ENCODINGS[name]
        self.sample_rate = sample_rate

    def decode(self, data: bytes) -> npt.NDArray[np.generic]:
        if len(data) % self.dtype.itemsize:
            raise InvalidAudioError(
                "<stream>",
                f"a frame of {len(data)} bytes is not a whole number of "
                f"{self.dtype.itemsize}-byte {self.encoding} samples",
            )
        samples: npt.NDArray[Any] = np.frombuffer(data, dtype=self.dtype)
        return samples.astype(self.dtype.newbyteorder("="))


def file_chunks(
    path: str | os.PathLike[str], chunk_seconds: float = 0.1
) -> Iterator[tuple[npt.NDArray[np.float32], int]]:
    """A recording (any format the engine decodes, by content) as ``(chunk, rate)`` pairs of
    (n,) float32 mono at the file's own rate, ``chunk_seconds`` each. Raises the engine's
    AudioError subclasses (missing, undecodable, a rate out of range, too long)."""
    if not chunk_seconds > 0:
        raise UsageError(f"chunk_seconds must be positive, not {chunk_seconds}")
    stream = open_source(path)
    size = max(1, int(stream.rate * chunk_seconds))
    pending = np.zeros(0, np.float32)
    for block in stream.blocks:
        pending = np.concatenate([pending, downmix(block)])
        while pending.size >= size:
            yield pending[:size], stream.rate
            pending = pending[size:]
    if pending.size:
        yield pending, stream.rate
