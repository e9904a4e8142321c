"""Audio front end: decode any recording to mono float32 at 16 kHz, or say exactly why not.

Decoding goes by content, never by file extension: libsndfile (WAV, FLAC, Ogg Vorbis/Opus,
MP3, AIFF, ...) is tried first, PyAV's bundled FFmpeg (M4A/AAC, WebM, anything else) second.
Every failure is a typed :class:`~speakerdb.errors.AudioError`; nothing here returns silence
or zeros in place of audio it could not read.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt

from speakerdb.errors import (
    AudioDecodeError,
    AudioNotFoundError,
    InvalidAudioError,
    NoSpeechError,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SAMPLE_RATE",
    "AudioInput",
    "DecodedAudio",
    "decode_file",
    "load_audio",
    "source_label",
]

SAMPLE_RATE = 16_000
"""The rate (Hz) every recording is converted to before the model sees it."""
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 768_000

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


def load_audio(source: AudioInput, sample_rate: int | None = None) -> DecodedAudio:
    """Decode ``source`` to mono float32 at 16 kHz.

    source: a path, or an array of samples shaped (n,) or (n, channels) -- integer PCM
    (scaled by its dtype's range) or float. ``sample_rate`` is required for arrays and ignored
    for files (the file's own rate is used).

    Raises AudioNotFoundError, AudioDecodeError (directory, empty, truncated, corrupt, not
    audio), InvalidAudioError (non-finite samples, unsupported rate, bad shape) or
    NoSpeechError (digital silence).
    """
    label = source_label(source)
    if isinstance(source, str | os.PathLike):
        data, rate = decode_file(Path(source))
    else:
        if sample_rate is None:
            raise InvalidAudioError(label, "an in-memory array needs its sample_rate")
        data, rate = _array_to_float(np.asarray(source), label), int(sample_rate)
    return _finish(data, rate, label)


def _finish(data: npt.NDArray[np.float32], rate: int, label: str) -> DecodedAudio:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            label, f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    if data.shape[0] == 0:
        raise AudioDecodeError(label, "contains no audio samples")
    if not np.all(np.isfinite(data)):
        raise InvalidAudioError(label, "contains non-finite samples (NaN or Inf)")
    channels = data.shape[1]
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    samples = resample(mono, rate)
    if samples.size == 0:
        raise AudioDecodeError(label, "contains no audio samples")
    if not np.any(samples):
        raise NoSpeechError(label, "is digital silence")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    digest = hashlib.sha256(samples.tobytes()).hexdigest()
    return DecodedAudio(samples, label, rate, channels, digest)


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
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        bits = array.dtype.itemsize * 8
        midpoint = 2.0 ** (bits - 1)
        return ((array.astype(np.float64) - midpoint) / midpoint).astype(np.float32)
    if np.issubdtype(array.dtype, np.signedinteger):
        scale = float(2 ** (array.dtype.itemsize * 8 - 1))
        return (array.astype(np.float64) / scale).astype(np.float32)
    raise InvalidAudioError(label, f"unsupported sample type {array.dtype}")


# --- files -------------------------------------------------------------------------------------


def decode_file(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    """Decode a file by content. Returns (samples (n, channels) float32, sample rate in Hz)."""
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
        decoded = _decode_with_soundfile(path)
        if not isinstance(decoded, str):
            return decoded
        sndfile_error = decoded
    decoded_av = _decode_with_av(path, label)
    if decoded_av is not None:
        return decoded_av
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


def _decode_with_soundfile(path: Path) -> tuple[npt.NDArray[np.float32], int] | str:
    """Decoded audio, or the libsndfile error message when it cannot decode the file."""
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as f:
            data = f.read(dtype="float32", always_2d=True)
            return data, int(f.samplerate)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        message = str(exc).split(":", 1)[-1].strip() if ":" in str(exc) else str(exc)
        return message or "unrecognised format"


def _decode_with_av(path: Path, label: str) -> tuple[npt.NDArray[np.float32], int] | None:
    """Decode with FFmpeg. None when FFmpeg does not recognise the content at all; raises
    AudioDecodeError when it recognises the container but the data is corrupt or truncated."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return None
    try:
        with container:
            if not container.streams.audio:
                raise AudioDecodeError(label, "has no audio stream")
            stream = container.streams.audio[0]
            chunks: list[npt.NDArray[np.float32]] = []
            rate = 0
            for frame in container.decode(stream):
                rate = frame.sample_rate or rate
                chunks.append(_frame_to_float(frame))
    except av.FFmpegError as exc:
        raise AudioDecodeError(label, f"corrupt or truncated audio ({_av_reason(exc)})") from None
    if not chunks or rate <= 0:
        raise AudioDecodeError(label, "contains no audio samples")
    return np.concatenate(chunks, axis=0), rate


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
        return array.astype(np.float32, copy=False)
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


# --- resampling --------------------------------------------------------------------------------


def resample(samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    """(n,) float32 at ``rate`` Hz -> (m,) float32 at 16 kHz (band-limited sinc, Kaiser)."""
    if rate == SAMPLE_RATE:
        return samples
    import torch

    resampler = _resampler(rate)
    with torch.inference_mode():
        out = resampler(torch.from_numpy(np.ascontiguousarray(samples))[None, :])
    return out[0].numpy()


@functools.lru_cache(maxsize=16)
def _resampler(rate: int) -> torch.nn.Module:
    import torchaudio

    # A Kaiser-windowed sinc close to soxr's "high quality" band edge, at a moderate length.
    return torchaudio.transforms.Resample(
        orig_freq=rate,
        new_freq=SAMPLE_RATE,
        lowpass_filter_width=24,
        rolloff=0.945,
        resampling_method="sinc_interp_kaiser",
        beta=8.555,
    )
