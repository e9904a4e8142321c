"""Decode a recording chunk by chunk: mono float32 at 16 kHz, with bounded memory.

:func:`speakerdb.model._audio.load_audio` holds a whole recording in memory (a 2-hour file is
460 MB of float32 at 16 kHz). Diarization reads long recordings, so it decodes blocks
(libsndfile for WAV/FLAC/Ogg/..., PyAV's FFmpeg for everything else, the same split by
content as ``load_audio``), down-mixes them and resamples them with soxr's streaming
resampler, so that only one block is ever held. In-memory arrays go through ``load_audio``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from speakerdb.errors import AudioDecodeError, InvalidAudioError, NoSpeechError
from speakerdb.model._audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioInput,
    load_audio,
    source_label,
)

__all__ = ["BLOCK_SECONDS", "AudioStream", "open_stream"]

BLOCK_SECONDS = 30.0
"""Seconds of audio decoded at once (about 2 MB of float32 at 16 kHz)."""

_SNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff")


class AudioStream:
    """A recording as consecutive blocks of (n,) float32 mono samples at 16 kHz.

    ``source``: the path as given or ``<array>``; ``duration``: seconds, when the container
    declares it (None otherwise, e.g. some MP3/M4A). Iterating decodes; it raises AudioError
    subclasses for corrupt data, non-finite samples or a recording that is all digital zero.
    """

    def __init__(self, source: AudioInput, sample_rate: int | None = None) -> None:
        self.source = source_label(source)
        self._input = source
        self._sample_rate = sample_rate
        self.duration: float | None = None
        if isinstance(source, str | os.PathLike):
            self._path: Path | None = Path(source)
            self._kind, self.duration = _probe(self._path, self.source)
        else:
            self._path = None
            self._kind = "array"
            self._decoded = load_audio(source, sample_rate).samples
            self.duration = len(self._decoded) / SAMPLE_RATE

    def blocks(self, block_seconds: float = BLOCK_SECONDS) -> Iterator[npt.NDArray[np.float32]]:
        """Yield (n,) float32 blocks at 16 kHz, about ``block_seconds`` each."""
        size = max(1, int(block_seconds * SAMPLE_RATE))
        if self._kind == "array":
            for start in range(0, len(self._decoded), size):
                yield self._decoded[start : start + size]
            return
        assert self._path is not None
        raw = _sndfile_blocks if self._kind == "sndfile" else _av_blocks
        heard = False
        for block in _resampled(raw(self._path, self.source, block_seconds), self.source):
            if block.size:
                if not np.all(np.isfinite(block)):
                    raise InvalidAudioError(self.source, "contains non-finite samples (NaN or Inf)")
                heard = heard or bool(np.any(block))
                yield block
        if not heard:
            raise NoSpeechError(self.source, "is digital silence")


def open_stream(source: AudioInput, sample_rate: int | None = None) -> AudioStream:
    """Check that ``source`` can be decoded (exists, is audio, has a usable rate) and return
    its stream. Raises the AudioError subclasses of :func:`speakerdb.model._audio.load_audio`."""
    return AudioStream(source, sample_rate)


def _probe(path: Path, label: str) -> tuple[str, float | None]:
    """Which decoder reads ``path`` ("sndfile" or "av") and its declared duration (s)."""
    from speakerdb.model._audio import decode_file

    try:
        st = path.stat()
    except OSError:
        decode_file(path)  # raises the precise AudioError
        raise AudioDecodeError(label, "cannot access file") from None
    if path.is_dir() or st.st_size == 0:
        decode_file(path)
        raise AudioDecodeError(label, "not a readable audio file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise AudioDecodeError(label, f"cannot read file ({exc.strerror or exc})") from None
    if head[:4] in _SNDFILE_MAGIC:
        import soundfile  # type: ignore[import-untyped]

        try:
            with soundfile.SoundFile(str(path)) as f:
                _check_rate(int(f.samplerate), label)
                return "sndfile", f.frames / f.samplerate if f.frames > 0 else None
        except (soundfile.LibsndfileError, RuntimeError):
            pass
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        raise AudioDecodeError(label, "not a readable audio file (format not recognised)") from None
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(label, "has no audio stream")
        stream = container.streams.audio[0]
        if stream.rate:
            _check_rate(int(stream.rate), label)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
    return "av", duration


def _check_rate(rate: int, label: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            label, f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )


def _sndfile_blocks(
    path: Path, label: str, block_seconds: float
) -> Iterator[tuple[npt.NDArray[np.float32], int]]:
    """(n,) float32 mono blocks at the file's own rate, with that rate."""
    import soundfile  # type: ignore[import-untyped]

    try:
        with soundfile.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            size = max(1, int(block_seconds * rate))
            while True:
                data = f.read(size, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                yield _mono(data), rate
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(label, f"corrupt or truncated audio ({exc})") from None


def _av_blocks(
    path: Path, label: str, block_seconds: float
) -> Iterator[tuple[npt.NDArray[np.float32], int]]:
    import av

    from speakerdb.model._audio import _frame_to_float

    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.audio[0]
            pending: list[npt.NDArray[np.float32]] = []
            count, rate = 0, 0
            for frame in container.decode(stream):
                if frame.sample_rate and rate and frame.sample_rate != rate and pending:
                    yield np.concatenate(pending), rate
                    pending, count = [], 0
                rate = frame.sample_rate or rate
                pending.append(_mono(_frame_to_float(frame)))
                count += pending[-1].size
                if count >= block_seconds * rate:
                    yield np.concatenate(pending), rate
                    pending, count = [], 0
            if pending and rate:
                yield np.concatenate(pending), rate
    except av.FFmpegError as exc:
        reason = str(getattr(exc, "strerror", None) or exc).split(":")[0].strip()
        raise AudioDecodeError(label, f"corrupt or truncated audio ({reason})") from None


def _mono(data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(n, channels) -> (n,) float32, the channels averaged."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    return data.mean(axis=1, dtype=np.float32)


def _resampled(
    blocks: Iterator[tuple[npt.NDArray[np.float32], int]], label: str
) -> Iterator[npt.NDArray[np.float32]]:
    """Blocks at their own rate -> blocks at 16 kHz (soxr's streaming HQ resampler keeps
    its filter state between blocks, so block edges leave no trace)."""
    import soxr  # type: ignore[import-untyped]

    resampler: soxr.ResampleStream | None = None
    current = 0
    for block, rate in blocks:
        _check_rate(rate, label)
        if rate == SAMPLE_RATE and resampler is None:
            yield block
            continue
        if resampler is None or rate != current:
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            current = rate
        yield resampler.resample_chunk(block, last=False)
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
