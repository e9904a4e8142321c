"""Audio front end: decode any recording to mono float32 at 16 kHz, or say exactly why not.

Decoding goes by content, never by file extension: libsndfile (WAV, FLAC, Ogg Vorbis/Opus,
MP3, AIFF, ...) is tried first, PyAV's bundled FFmpeg (M4A/AAC, WebM, anything else) second.
Every failure is a typed :class:`~speakerdb.errors.AudioError`; nothing here returns silence
or zeros in place of audio it could not read.

Files are read in blocks (:func:`decode_blocks`), never in one allocation sized by what a
header claims, and no recording longer than :func:`max_audio_seconds` is decoded past that
limit: a header declaring more is refused before any sample is read, a stream without a
declared length is refused as soon as it passes it (TooLongError).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from speakerdb.errors import (
    AudioDecodeError,
    AudioNotFoundError,
    InvalidAudioError,
    NoSpeechError,
    TooLongError,
    UsageError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "MAX_AUDIO_SECONDS_ENV",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SAMPLE_RATE",
    "AudioInput",
    "DecodedAudio",
    "DecodedStream",
    "decode_blocks",
    "decode_file",
    "load_audio",
    "max_audio_seconds",
    "open_source",
    "source_label",
]

SAMPLE_RATE = 16_000
"""The rate (Hz) every recording is converted to before the model sees it."""
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 768_000

DEFAULT_MAX_AUDIO_SECONDS = 3 * 3600.0
"""Longest recording decoded by default (s). Memory grows with the length kept at 16 kHz
(about 8 bytes per sample at the peak: 0.35 GB for an hour), so the limit bounds it."""
MAX_AUDIO_SECONDS_ENV = "SPEAKERDB_MAX_AUDIO_SECONDS"

BLOCK_FRAMES = 1 << 16
"""Frames read from a file at a time."""

AudioInput = str | os.PathLike[str] | npt.NDArray[np.floating] | npt.NDArray[np.integer]
"""A path to a recording, or an in-memory array of samples (then give its sample rate)."""


@dataclass(frozen=True)
class DecodedAudio:
    """A recording converted to the model's input format.

    samples: (n,) float32 mono at :data:`SAMPLE_RATE`, nominally in [-1, 1].
    source: the path as given, or ``"<array>"``; original_rate: Hz before resampling;
    channels: channel count before down-mixing; sha256: hex digest of ``samples`` (the same
    audio decodes to the same digest whatever its container, so duplicates are recognised).
    """

    samples: npt.NDArray[np.float32]
    source: str
    original_rate: int
    channels: int
    sha256: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


def source_label(source: AudioInput) -> str:
    """How a source is named in messages: the path as given, or ``<array>``."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "<array>"


def max_audio_seconds(value: float | None = None) -> float:
    """The duration limit in seconds: ``value`` when given, else ``$SPEAKERDB_MAX_AUDIO_SECONDS``,
    else :data:`DEFAULT_MAX_AUDIO_SECONDS`. Raises UsageError unless it is a positive number."""
    origin = "max_audio_seconds"
    if value is None:
        text = os.environ.get(MAX_AUDIO_SECONDS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_AUDIO_SECONDS
        origin = MAX_AUDIO_SECONDS_ENV
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{origin} must be a number of seconds, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{origin} must be a positive number of seconds, not {value!r}")
    return float(value)


def _too_long(label: str, limit: float, seconds: float | None) -> TooLongError:
    lasts = f", it declares {_hms(seconds)}" if seconds is not None else ""
    return TooLongError(
        label,
        f"is longer than the {_hms(limit)} limit{lasts} (raise it with {MAX_AUDIO_SECONDS_ENV})",
    )


def _hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:.4g} min"
    return f"{seconds / 3600:.4g} h"


@dataclass
class DecodedStream:
    """A recording being decoded: ``blocks`` yields (k, channels) float32 at ``rate`` Hz, in
    order, and stops with TooLongError past the limit. ``frames``: the length the header
    declares, when it declares one (a hint for preallocation, not a promise)."""

    source: str
    rate: int
    channels: int
    frames: int | None
    blocks: Iterator[npt.NDArray[np.float32]]


def open_source(
    source: AudioInput, sample_rate: int | None = None, max_seconds: float | None = None
) -> DecodedStream:
    """Start decoding a path or an array (see :func:`load_audio` for what is accepted).

    Raises AudioNotFoundError, AudioDecodeError, InvalidAudioError (unsupported rate, bad
    array) or TooLongError (declared length past the limit) now; the blocks may still raise
    AudioDecodeError (corrupt data), InvalidAudioError (non-finite samples) or TooLongError.
    """
    label = source_label(source)
    limit = max_audio_seconds(max_seconds)
    if isinstance(source, str | os.PathLike):
        stream = decode_blocks(Path(source), limit)
    else:
        if sample_rate is None:
            raise InvalidAudioError(label, "an in-memory array needs its sample_rate")
        data = _array_to_float(np.asarray(source), label)
        rate = int(sample_rate)
        _check_rate(rate, label)
        if data.shape[0] > limit * rate:
            raise _too_long(label, limit, data.shape[0] / rate)
        blocks = (data[i : i + BLOCK_FRAMES] for i in range(0, data.shape[0], BLOCK_FRAMES))
        stream = DecodedStream(label, rate, data.shape[1], data.shape[0], blocks)
    _check_rate(stream.rate, label)
    stream.blocks = _checked(stream.blocks, label)
    return stream


def _check_rate(rate: int, label: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            label, f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )


def _checked(
    blocks: Iterator[npt.NDArray[np.float32]], label: str
) -> Iterator[npt.NDArray[np.float32]]:
    empty = True
    for block in blocks:
        if block.shape[0] == 0:
            continue
        if not np.all(np.isfinite(block)):
            raise InvalidAudioError(label, "contains non-finite samples (NaN or Inf)")
        empty = False
        yield block
    if empty:
        raise AudioDecodeError(label, "contains no audio samples")


def downmix(block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(k, channels) float32 -> (k,) float32, the channels' mean."""
    if block.shape[1] > 1:
        return np.asarray(block.mean(axis=1, dtype=np.float32), dtype=np.float32)
    return np.ascontiguousarray(block[:, 0])


def load_audio(
    source: AudioInput, sample_rate: int | None = None, max_seconds: float | None = None
) -> DecodedAudio:
    """Decode ``source`` to mono float32 at 16 kHz (GE2E's resampler; the Embedder resamples
    with its model's own).

    source: a path, or an array of samples shaped (n,) or (n, channels) -- integer PCM
    (scaled by its dtype's range) or float. ``sample_rate`` is required for arrays and ignored
    for files (the file's own rate is used). ``max_seconds``: see :func:`max_audio_seconds`.

    Raises AudioNotFoundError, AudioDecodeError (directory, empty, truncated, corrupt, not
    audio), InvalidAudioError (non-finite samples, unsupported rate, bad shape),
    TooLongError (past the limit) or NoSpeechError (digital silence).
    """
    from speakerdb.model._resampling import GE2E_RESAMPLING, StreamResampler

    stream = open_source(source, sample_rate, max_seconds)
    resampler = StreamResampler(stream.rate, SAMPLE_RATE, GE2E_RESAMPLING)
    samples, digest = collect_resampled(stream, resampler.feed, resampler.finish)
    return DecodedAudio(samples, stream.source, stream.rate, stream.channels, digest)


def collect_resampled(
    stream: DecodedStream,
    feed: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    finish: Callable[[], npt.NDArray[np.float32]],
) -> tuple[npt.NDArray[np.float32], str]:
    """Down-mix and resample every block of ``stream`` (``feed`` each mono block, then
    ``finish``) into one (n,) float32 array at 16 kHz, and its sha256.

    The output is written into one array sized from the declared length when there is one,
    so the recording is held once at 16 kHz and never at its own rate. Raises
    AudioDecodeError (no samples) and NoSpeechError (digital silence)."""
    hint = 0
    if stream.frames:
        hint = math.ceil(stream.frames * SAMPLE_RATE / stream.rate)
    out = np.empty(hint, np.float32)
    filled = 0
    spill: list[npt.NDArray[np.float32]] = []  # past the declared length
    digest = hashlib.sha256()
    nonzero = False

    def store(part: npt.NDArray[np.float32]) -> None:
        nonlocal filled, nonzero
        if part.size == 0:
            return
        digest.update(part.tobytes())
        nonzero = nonzero or bool(np.any(part))
        fits = min(part.size, hint - filled)
        out[filled : filled + fits] = part[:fits]
        filled += fits
        if fits < part.size:
            spill.append(part[fits:].copy())

    for block in stream.blocks:
        store(feed(downmix(block)))
    store(finish())
    samples = out[:filled]
    if spill:
        samples = np.concatenate([samples, *spill])
    if samples.size == 0:
        raise AudioDecodeError(stream.source, "contains no audio samples")
    if not nonzero:
        raise NoSpeechError(stream.source, "is digital silence")
    return samples, digest.hexdigest()


def _array_to_float(array: npt.NDArray[np.generic], label: str) -> npt.NDArray[np.float32]:
    """(n,) or (n, channels) integer/float array -> (n, channels) float32."""
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidAudioError(
            label, f"expected samples shaped (n,) or (n, channels), got {array.shape}"
        )
    if array.shape[1] > array.shape[0] and array.shape[1] > 64:
        # (channels, n) is the torch convention; accept it rather than mis-read it.
        array = array.T
    if np.issubdtype(array.dtype, np.floating):
        return np.asarray(array, dtype=np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        bits = array.dtype.itemsize * 8
        midpoint = 2.0 ** (bits - 1)
        return ((array.astype(np.float64) - midpoint) / midpoint).astype(np.float32)
    if np.issubdtype(array.dtype, np.signedinteger):
        scale = float(2 ** (array.dtype.itemsize * 8 - 1))
        return (array.astype(np.float64) / scale).astype(np.float32)
    raise InvalidAudioError(label, f"unsupported sample type {array.dtype}")


# --- files -------------------------------------------------------------------------------------


def decode_file(
    path: Path, max_seconds: float | None = None
) -> tuple[npt.NDArray[np.float32], int]:
    """Decode a file by content. Returns (samples (n, channels) float32, sample rate in Hz).
    Raises as :func:`open_source`."""
    stream = decode_blocks(Path(path), max_audio_seconds(max_seconds))
    blocks = list(_checked(stream.blocks, stream.source))
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0], stream.rate


def decode_blocks(path: Path, limit: float) -> DecodedStream:
    """Open a file by content for decoding in blocks of :data:`BLOCK_FRAMES` frames.

    Raises AudioNotFoundError, AudioDecodeError, or TooLongError when the header declares
    more than ``limit`` seconds; the blocks raise AudioDecodeError for corrupt data and
    TooLongError once more than ``limit`` seconds have been decoded."""
    label = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioNotFoundError(label, "no such file") from None
    except OSError as exc:
        raise AudioDecodeError(label, f"cannot access file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise AudioDecodeError(label, "is a directory, not an audio file")
    if st.st_size == 0:
        raise AudioDecodeError(label, "is an empty file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            _check_wav_complete(fh, label)
    except PermissionError:
        raise AudioDecodeError(label, "permission denied") from None
    except OSError as exc:
        raise AudioDecodeError(label, f"cannot read file ({exc.strerror or exc})") from None

    sndfile_error = "format not recognised"
    if _libsndfile_container(head):
        opened = _open_with_soundfile(path, label, limit)
        if not isinstance(opened, str):
            return opened
        sndfile_error = opened
    opened_av = _open_with_av(path, label, limit)
    if opened_av is not None:
        return opened_av
    raise AudioDecodeError(label, f"not a readable audio file ({sndfile_error})")


# Magic numbers of the containers handed to libsndfile. Everything else (MP3, MP4/M4A,
# WebM, ...) goes to FFmpeg, which sniffs content on its own: libsndfile would fall back on
# the file name for unknown content, and its MP3 decoder prints to the process's stderr.
_SNDFILE_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"BW64",
    b"FORM",
    b"fLaC",
    b"OggS",
    b".snd",
    b"caff",
    b"NIST",
    b"riff",
)


def _libsndfile_container(head: bytes) -> bool:
    return head[:4] in _SNDFILE_MAGIC


# libsndfile's count for "unknown length" (SF_COUNT_MAX); such files are counted as they decode.
_UNKNOWN_FRAMES = (1 << 63) - 1


def _open_with_soundfile(path: Path, label: str, limit: float) -> DecodedStream | str:
    """A block stream, or the libsndfile error message when it cannot open the file."""
    import soundfile

    try:
        handle = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        return _sndfile_reason(exc)
    rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
    declared = frames if 0 < frames < _UNKNOWN_FRAMES else None
    if declared is not None and rate > 0 and declared > limit * rate:
        handle.close()
        raise _too_long(label, limit, declared / rate)
    if declared is None and frames != 0:
        # No length in the header (a FLAC with total 0, a streamed Ogg): libsndfile may seek
        # for one and fail mid-read; FFmpeg decodes such streams and is counted as it goes.
        opened_av = _open_with_av(path, label, limit)
        if opened_av is not None:
            handle.close()
            return opened_av

    def blocks() -> Iterator[npt.NDArray[np.float32]]:
        total = 0
        with handle:
            while True:
                try:
                    block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                except (soundfile.LibsndfileError, RuntimeError) as exc:
                    raise AudioDecodeError(
                        label, f"corrupt or truncated audio ({_sndfile_reason(exc)})"
                    ) from None
                if block.shape[0] == 0:
                    return
                total += block.shape[0]
                if total > limit * rate:
                    raise _too_long(label, limit, None)
                yield block

    return DecodedStream(label, rate, channels, declared, blocks())


def _sndfile_reason(exc: Exception) -> str:
    message = str(exc).split(":", 1)[-1].strip() if ":" in str(exc) else str(exc)
    return message or "unrecognised format"


def _open_with_av(path: Path, label: str, limit: float) -> DecodedStream | None:
    """A block stream decoded by FFmpeg. None when FFmpeg does not recognise the content at
    all; raises AudioDecodeError when it recognises the container but not an audio stream, and
    the blocks raise it when the data is corrupt or truncated. FFmpeg's declared durations
    may say anything, so the limit is applied to what decodes."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return None
    try:
        if not container.streams.audio:
            raise AudioDecodeError(label, "has no audio stream")
        stream = container.streams.audio[0]
        frames = container.decode(stream)
        first = next(frames, None)
    except av.FFmpegError as exc:
        container.close()
        raise AudioDecodeError(label, f"corrupt or truncated audio ({_av_reason(exc)})") from None
    except BaseException:
        container.close()
        raise
    if first is None or not first.sample_rate:
        container.close()
        raise AudioDecodeError(label, "contains no audio samples")
    rate = int(first.sample_rate)
    channels = len(first.layout.channels)

    def blocks() -> Iterator[npt.NDArray[np.float32]]:
        total = 0
        with container:
            frame: Any = first
            try:
                while frame is not None:
                    block = _frame_to_float(frame)
                    if block.shape[1] != channels:
                        raise AudioDecodeError(label, "changes its channel count mid-stream")
                    total += block.shape[0]
                    if total > limit * rate:
                        raise _too_long(label, limit, None)
                    yield block
                    frame = next(frames, None)
            except av.FFmpegError as exc:
                raise AudioDecodeError(
                    label, f"corrupt or truncated audio ({_av_reason(exc)})"
                ) from None

    return DecodedStream(label, rate, channels, None, blocks())


def _av_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip()


def _frame_to_float(frame: object) -> npt.NDArray[np.float32]:
    """An av.AudioFrame -> (n, channels) float32, whatever its sample format."""
    array = frame.to_ndarray()  # type: ignore[attr-defined]
    fmt = frame.format  # type: ignore[attr-defined]
    channels = len(frame.layout.channels)  # type: ignore[attr-defined]
    # Planar formats come as (channels, n); packed ones as (1, n * channels).
    array = array.reshape(channels, -1).T if fmt.is_planar else array.reshape(-1, channels)
    if np.issubdtype(array.dtype, np.floating):
        return np.asarray(array, dtype=np.float32)
    return _array_to_float(array, "<frame>")


def _check_wav_complete(fh: BinaryIO, label: str) -> None:
    """Reject RIFF/WAVE files whose data chunk is shorter than their header declares.

    libsndfile silently reads what is there, which would let a file cut in half pass as
    valid. Headers written by streaming tools (size 0 or 0xFFFFFFFF) are left alone.
    """
    fh.seek(0)
    header = fh.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return
    size = os.fstat(fh.fileno()).st_size
    position = 12
    while position + 8 <= size:
        fh.seek(position)
        chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
        if chunk_id == b"data":
            if chunk_size in (0, 0xFFFFFFFF):
                return
            if position + 8 + chunk_size > size:
                raise AudioDecodeError(
                    label,
                    f"is truncated: its data chunk declares {chunk_size} bytes but only "
                    f"{size - position - 8} are present",
                )
            return
        position += 8 + chunk_size + (chunk_size & 1)
    # No data chunk: libsndfile reports that precisely.
