"""From a recording to the GE2E encoder's input: decoded, normalised, trimmed, windowed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from speakerdb._quality import speech_bandwidth_hz
from speakerdb.errors import NoSpeechError, TooLittleSpeechError, UsageError
from speakerdb.model._audio import SAMPLE_RATE, AudioInput, load_audio
from speakerdb.model._preprocess import (
    MEL_HOP,
    median_spectral_flatness,
    mel_spectrogram,
    normalize_volume,
    power_spectrogram,
    trim_long_silences,
)
from speakerdb.model._windows import WINDOW_FRAMES, window_starts

__all__ = ["MIN_SPEECH_SECONDS", "PreparedUtterance", "prepare_utterance"]

MIN_SPEECH_SECONDS = 0.3
"""Least audio (s) that must remain after silence trimming for a recording to be embedded.

WebRTC VAD keeps a voiced stretch only if it lasts about 150 ms or more (5 of 8 windows of
30 ms), plus up to 90 ms of context on each side; below 0.3 s one 1.6 s model window would be
mostly padding and the voiceprint unreliable.
"""

MAX_SPECTRAL_FLATNESS = 0.5
"""Recordings whose median frame spectrum is flatter than this are noise, not speech.

WebRTC VAD calls loud broadband noise voiced; speech, even noisy, is far from flat (the
noisiest development recordings reach 0.12; speech in white noise at 5 dB SNR about 0.5).
"""

MIN_LOUDNESS_RANGE_DB = 1.0
"""Speech rises and falls from syllable to syllable; a signal whose 25 ms frame energies stay
within this range (10th to 90th percentile, in dB) is a steady tone, buzz or sweep. The
flattest development recording (noisy read speech) spans 2.7 dB, synthetic tones under 0.1."""

_FRAME_OFFSETS = torch.arange(WINDOW_FRAMES)


@dataclass(frozen=True)
class PreparedUtterance:
    """A recording ready for the encoder.

    windows: (n_windows, 160, 40) float32 mel power frames; source: path or ``<array>``;
    sha256: digest of the decoded 16 kHz samples; duration: seconds of decoded audio;
    speech_seconds: seconds left after silence trimming; bandwidth_hz: the decoded audio's
    bandwidth in Hz (:func:`speakerdb._quality.speech_bandwidth_hz`, a quality measure for
    calibration), None when it cannot be measured.
    """

    windows: torch.Tensor
    source: str
    sha256: str
    duration: float
    speech_seconds: float
    bandwidth_hz: float | None = None


def prepare_utterance(source: AudioInput, sample_rate: int | None = None) -> PreparedUtterance:
    """Decode and preprocess one recording (see :func:`speakerdb.model._audio.load_audio`).

    Raises the AudioError subclasses of load_audio, plus NoSpeechError when VAD finds no speech
    or the signal is noise (:data:`MAX_SPECTRAL_FLATNESS`) or a steady tone
    (:data:`MIN_LOUDNESS_RANGE_DB`), and TooLittleSpeechError below
    :data:`MIN_SPEECH_SECONDS`.
    """
    decoded = load_audio(source, sample_rate)
    speech = trim_long_silences(normalize_volume(decoded.samples))
    if speech.size == 0:
        raise NoSpeechError(decoded.source, "no speech detected")
    speech_seconds = speech.size / SAMPLE_RATE
    if speech_seconds < MIN_SPEECH_SECONDS:
        raise TooLittleSpeechError(
            decoded.source,
            f"too little speech: {speech_seconds:.2f} s after silence trimming, "
            f"at least {MIN_SPEECH_SECONDS} s needed",
        )
    real_frames = 1 + speech.size // MEL_HOP
    starts, padded_length = window_starts(speech.size)
    if padded_length > speech.size:
        speech = np.pad(speech, (0, padded_length - speech.size))
    with torch.inference_mode():
        samples = torch.from_numpy(speech)
        power = power_spectrogram(samples)
        flatness = median_spectral_flatness(power[:, :real_frames])
        if flatness > MAX_SPECTRAL_FLATNESS:
            raise NoSpeechError(
                decoded.source,
                f"no speech detected: the signal is noise-like (spectral flatness {flatness:.2f})",
            )
        energy_db = 10.0 * torch.log10(power[:, :real_frames].sum(0).double() + 1e-12)
        spread = float(torch.quantile(energy_db, 0.9) - torch.quantile(energy_db, 0.1))
        if spread < MIN_LOUDNESS_RANGE_DB:
            raise NoSpeechError(
                decoded.source,
                f"no speech detected: a steady tone or buzz (loudness varies {spread:.1f} dB)",
            )
        mel = mel_spectrogram(samples, power)
        index = torch.tensor(starts)[:, None] + _FRAME_OFFSETS
        windows = mel[index].contiguous()
    return PreparedUtterance(
        windows=windows,
        source=decoded.source,
        sha256=decoded.sha256,
        duration=decoded.duration,
        speech_seconds=speech_seconds,
        bandwidth_hz=_bandwidth(decoded.samples),
    )


def _bandwidth(samples: np.ndarray) -> float | None:
    """Bandwidth of the decoded 16 kHz samples, measured on the whole recording (silences
    carry little power); None if it cannot be measured, which only disables calibration."""
    try:
        return speech_bandwidth_hz(samples, SAMPLE_RATE)
    except UsageError:
        return None
