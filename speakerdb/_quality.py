"""Cheap quality measures of a recording, for calibration (see :mod:`speakerdb._calibration`).

Speech duration is the main one and the engine already reports it (``speech_seconds``, the
seconds left after silence trimming). The other is the recording's audio bandwidth: a phone
line (300-3400 Hz) or a band-limited recorder removes the upper bands a wideband speaker model
relies on, and impostor scores rise (0.82 accepts 8.7 % of the development set's phone-line
impostor pairs, 0.5 % of the same speech's wideband pairs).

Pure numpy; no torch, no SQL.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from speakerdb.errors import UsageError

__all__ = ["BANDWIDTH_ENERGY_FRACTION", "BANDWIDTH_MAX_HZ", "speech_bandwidth_hz"]

BANDWIDTH_ENERGY_FRACTION = 0.999
"""The bandwidth is the frequency below which this share of the power lies (a -30 dB point):
wideband development speech 5.2-8 kHz, the same speech through a phone line 2.5-3.4 kHz."""

BANDWIDTH_MAX_HZ = 8000.0
"""Upper limit: the models see 16 kHz audio, nothing above 8 kHz counts."""

_FRAME_SECONDS = 0.025
_HOP_SECONDS = 0.010
_CHUNK_FRAMES = 512  # frames transformed at once: bounds memory, stays in cache


def speech_bandwidth_hz(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    energy_fraction: float = BANDWIDTH_ENERGY_FRACTION,
    max_hz: float = BANDWIDTH_MAX_HZ,
) -> float:
    """Audio bandwidth of a recording, in Hz.

    samples: (n,) mono float at ``sample_rate`` Hz, the decoded recording (silences may stay
    in: they carry little power next to speech). The long-term power spectrum is averaged
    over 25 ms Hann frames every 10 ms; the result is the lowest frequency below which
    ``energy_fraction`` of the power between DC (excluded) and ``max_hz`` (or the Nyquist
    frequency, if lower) lies. Resolution: 1 / 25 ms = 40 Hz. The same speech gives the same
    value at its own rate or resampled to 16 kHz (to within a couple of bins).

    Raises UsageError for fewer samples than one frame, non-finite samples or a silent signal.
    """
    x = np.asarray(samples)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x = x.ravel()  # float32 stays float32: frames are widened chunk by chunk (bounded memory)
    if not 0.0 < energy_fraction < 1.0:
        raise UsageError(f"energy_fraction must be in (0, 1), not {energy_fraction}")
    if sample_rate <= 0:
        raise UsageError(f"sample rate must be positive, not {sample_rate}")
    frame = round(_FRAME_SECONDS * sample_rate)
    hop = max(1, round(_HOP_SECONDS * sample_rate))
    if frame < 2 or x.size < frame:
        raise UsageError(f"need at least {_FRAME_SECONDS} s of audio to measure bandwidth")
    if not np.all(np.isfinite(x)):
        raise UsageError("cannot measure the bandwidth of non-finite samples")
    window = np.hanning(frame)
    # A strided view of every frame (no copy); each chunk is copied once, windowed.
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    power = np.zeros(frame // 2 + 1)
    for first in range(0, frames.shape[0], _CHUNK_FRAMES):
        chunk = frames[first : first + _CHUNK_FRAMES].astype(np.float64)
        spectrum = np.fft.rfft(chunk * window, axis=1)
        power += (spectrum.real**2 + spectrum.imag**2).sum(axis=0)
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    keep = (freqs > 0) & (freqs <= max_hz)
    power, freqs = power[keep], freqs[keep]
    total = power.sum()
    if not total > 0:
        raise UsageError("cannot measure the bandwidth of a silent signal")
    share = np.cumsum(power) / total
    return float(freqs[min(int(np.searchsorted(share, energy_fraction)), freqs.size - 1)])
