"""GE2E preprocessing, exactly as the model was trained: volume normalisation, silence trimming
with WebRTC VAD, and a 40-band mel power spectrogram.

Parameters follow the GE2E training recipe (Wan et al. 2018; Resemblyzer's hparams): -30 dBFS
target volume (increase only), VAD mode 3 on 30 ms windows smoothed by a moving average of 8
and dilated so that no more than 6 silent windows survive in a row, and mel frames of 25 ms
every 10 ms (Slaney mel scale and area normalisation, zero-padded centring, power not log).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.model._audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXACT_SAMPLES",
    "MEL_CHANNELS",
    "MEL_HOP",
    "MEL_WINDOW",
    "median_spectral_flatness",
    "mel_from_power",
    "mel_spectrogram",
    "normalize_volume",
    "power_spectrogram",
    "power_spectrogram_chunks",
    "speech_mask",
    "trim_long_silences",
    "vad_flags",
    "volume_gain",
]

TARGET_DBFS = -30.0
INT16_MAX = 2**15 - 1

VAD_WINDOW = SAMPLE_RATE * 30 // 1000  # samples (30 ms)
VAD_MODE = 3
VAD_MOVING_AVERAGE = 8
VAD_MAX_SILENCE = 6

MEL_WINDOW = SAMPLE_RATE * 25 // 1000  # samples (25 ms), also the FFT size
MEL_HOP = SAMPLE_RATE * 10 // 1000  # samples (10 ms)
MEL_CHANNELS = 40

EXACT_SAMPLES = 1 << 22
"""Recordings up to this many samples (4.4 min at 16 kHz) are processed in whole-array calls,
exactly as before streaming existed; longer ones in chunks of :data:`_CHUNK_FRAMES` frames or
:data:`_CHUNK_WINDOWS` VAD windows (the same values to float rounding, bounded memory)."""
_CHUNK_FRAMES = 1 << 12
_CHUNK_WINDOWS = 1 << 12


def normalize_volume(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Scale (n,) float32 samples up to -30 dBFS RMS; louder audio is left as it is."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) * INT16_MAX
    if rms == 0.0:
        return samples
    change_db = TARGET_DBFS - 20.0 * np.log10(rms / INT16_MAX)
    if change_db < 0:
        return samples
    return (samples * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)


def volume_gain(samples: npt.NDArray[np.float32]) -> np.float32 | None:
    """The factor :func:`normalize_volume` multiplies (n,) float32 samples by, None when it
    leaves them as they are. Long recordings are summed in chunks (no float64 copy)."""
    if samples.size <= EXACT_SAMPLES:
        mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    else:
        total = 0.0
        for first in range(0, samples.size, EXACT_SAMPLES):
            total += float(
                np.square(samples[first : first + EXACT_SAMPLES], dtype=np.float64).sum()
            )
        mean_square = total / samples.size
    rms = float(np.sqrt(mean_square)) * INT16_MAX
    if rms == 0.0:
        return None
    change_db = TARGET_DBFS - 20.0 * np.log10(rms / INT16_MAX)
    if change_db < 0:
        return None
    return np.float32(10.0 ** (change_db / 20.0))


def vad_flags(
    samples: npt.NDArray[np.float32], gain: np.float32 | None = None
) -> npt.NDArray[np.bool_]:
    """One WebRTC VAD decision per whole 30 ms window of (n,) float32 samples at 16 kHz, as
    if multiplied by ``gain`` first; converted to PCM chunk by chunk (bounded memory)."""
    vad = _Vad()
    n_windows = len(samples) // VAD_WINDOW
    flags = np.empty(n_windows, dtype=bool)
    step = VAD_WINDOW * 2
    for first in range(0, n_windows, _CHUNK_WINDOWS):
        count = min(_CHUNK_WINDOWS, n_windows - first)
        chunk = samples[first * VAD_WINDOW : (first + count) * VAD_WINDOW]
        if gain is not None:
            chunk = chunk * gain
        pcm_bytes = np.round(np.clip(chunk, -1.0, 1.0) * INT16_MAX).astype("<i2").tobytes()
        for i in range(count):
            flags[first + i] = vad.process(pcm_bytes[i * step : (i + 1) * step])
    return flags


def _vad_flags(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """One WebRTC VAD decision per whole 30 ms window of (n,) float32 samples at 16 kHz."""
    vad = _Vad()
    n_windows = len(samples) // VAD_WINDOW
    pcm = np.round(np.clip(samples[: n_windows * VAD_WINDOW], -1.0, 1.0) * INT16_MAX)
    pcm_bytes = pcm.astype("<i2").tobytes()
    step = VAD_WINDOW * 2
    return np.fromiter(
        (vad.process(pcm_bytes[i * step : (i + 1) * step]) for i in range(n_windows)),
        dtype=bool,
        count=n_windows,
    )


def speech_mask(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Which 30 ms windows to keep, from raw per-window VAD decisions (both (w,) bool).

    A centred moving average of 8 decisions (leaning one step right, as the width is even),
    rounded half to even -- 4 voiced windows out of 8 are not enough -- then dilated by a
    centred run of 7 windows, so at most 6 silent windows survive between voiced ones.
    """
    width = VAD_MOVING_AVERAGE
    values = flags.astype(np.float64)
    padded = np.concatenate([np.zeros((width - 1) // 2), values, np.zeros(width // 2)])
    sums = np.convolve(padded, np.ones(width), mode="valid")
    voiced = np.round(sums / width).astype(bool)
    reach = VAD_MAX_SILENCE // 2
    dilated = np.convolve(voiced.astype(np.int32), np.ones(VAD_MAX_SILENCE + 1, np.int32))
    return dilated[reach : reach + voiced.size] > 0


def trim_long_silences(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Drop silences longer than 6 VAD windows from (n,) float32 samples at 16 kHz.

    The tail that does not fill a whole 30 ms window is dropped too, as in training.
    Returns (m,) float32 with m <= n; m is 0 when no speech is detected.
    """
    flags = _vad_flags(samples)
    if flags.size == 0:
        return samples[:0]
    mask = np.repeat(speech_mask(flags), VAD_WINDOW)
    return samples[: mask.size][mask]


def power_spectrogram(samples: torch.Tensor) -> torch.Tensor:
    """|STFT|^2 of a (n,) float32 tensor at 16 kHz: (201, 1 + n // 160) float32.

    25 ms Hann windows every 10 ms, centred with zero padding (as the model was trained).
    """
    import torch

    spec = torch.stft(
        samples,
        n_fft=MEL_WINDOW,
        hop_length=MEL_HOP,
        win_length=MEL_WINDOW,
        window=_hann_window(),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.real.square() + spec.imag.square()


def power_spectrogram_chunks(
    samples: npt.NDArray[np.float32], length: int | None = None
) -> Iterator[torch.Tensor]:
    """:func:`power_spectrogram` of (n,) float32 samples zero-extended to ``length`` (default
    n), in consecutive (201, k) float32 chunks of frames: 1 + length // 160 frames in all.
    Short signals come in one chunk computed exactly as :func:`power_spectrogram` does."""
    import torch

    n = samples.size
    length = n if length is None else length
    if length <= EXACT_SAMPLES:
        whole = samples if length == n else np.pad(samples, (0, length - n))
        yield power_spectrogram(torch.from_numpy(np.ascontiguousarray(whole)))
        return
    half = MEL_WINDOW // 2
    total = 1 + length // MEL_HOP
    for first in range(0, total, _CHUNK_FRAMES):
        stop = min(total, first + _CHUNK_FRAMES)
        lo, hi = first * MEL_HOP - half, (stop - 1) * MEL_HOP + half
        segment = samples[max(lo, 0) : min(hi, n)]
        before = max(0, -lo)
        after = (hi - lo) - before - segment.size
        if before or after:
            segment = np.pad(segment, (before, after))
        spec = torch.stft(
            torch.from_numpy(np.ascontiguousarray(segment)),
            n_fft=MEL_WINDOW,
            hop_length=MEL_HOP,
            win_length=MEL_WINDOW,
            window=_hann_window(),
            center=False,
            return_complex=True,
        )
        yield spec.real.square() + spec.imag.square()


def mel_spectrogram(samples: torch.Tensor, power: torch.Tensor | None = None) -> torch.Tensor:
    """Mel power spectrogram of a (n,) float32 tensor at 16 kHz.

    Returns (1 + n // 160, 40) float32 frames: :func:`power_spectrogram` projected on 40
    Slaney mel bands (0-8 kHz, area-normalised). Not log-compressed. ``power`` may pass an
    already computed power spectrogram of ``samples``.
    """

    if power is None:
        power = power_spectrogram(samples)
    return mel_from_power(power)


def mel_from_power(power: torch.Tensor) -> torch.Tensor:
    """(201, frames) power spectrogram -> (frames, 40) float32 mel power frames."""
    import torch

    return torch.matmul(power.T, _mel_filterbank())


def median_spectral_flatness(power: torch.Tensor) -> float:
    """Median over frames of the spectral flatness (geometric / arithmetic mean of the power,
    DC excluded) of a (bins, frames) power spectrogram. White noise gives about 0.56, an
    impulse 1.0, speech typically below 0.1 (0.12 in the noisiest development recordings)."""
    import torch

    bins = power[1:].double() + 1e-12
    flatness = torch.exp(torch.log(bins).mean(0)) / bins.mean(0)
    return float(flatness.median())


@functools.cache
def _hann_window() -> torch.Tensor:
    import torch

    return torch.hann_window(MEL_WINDOW, periodic=True, dtype=torch.float32)


@functools.cache
def _mel_filterbank() -> torch.Tensor:
    """(201, 40) float32 Slaney-scale, Slaney-normalised triangular filters."""
    import torchaudio

    fbanks: torch.Tensor = torchaudio.functional.melscale_fbanks(
        n_freqs=MEL_WINDOW // 2 + 1,
        f_min=0.0,
        f_max=SAMPLE_RATE / 2,
        n_mels=MEL_CHANNELS,
        sample_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return fbanks


class _Vad:
    """WebRTC VAD in mode 3 at 16 kHz, through the C extension of the ``webrtcvad`` package.

    The extension is used directly: the package's Python wrapper imports ``pkg_resources``
    only to read its own version, which fails where setuptools is absent. The detector adapts
    to the noise it has seen, so each recording gets a fresh one, as in training.
    """

    def __init__(self) -> None:
        import _webrtcvad  # type: ignore[import-not-found]

        self._module = _webrtcvad
        self._handle = _webrtcvad.create()
        _webrtcvad.init(self._handle)
        _webrtcvad.set_mode(self._handle, VAD_MODE)

    def process(self, pcm16: bytes) -> bool:
        return bool(self._module.process(self._handle, SAMPLE_RATE, pcm16, len(pcm16) // 2))
