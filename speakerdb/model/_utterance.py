"""From a recording to an encoder's input: decoded, resampled, checked for speech, prepared.

Common to every model family (only the resampler and the front end are the family's):

    open_source          blocks of (k, channels) float32 at the file's rate, limit enforced
    -> resample          block by block with the family's resampler, into one (n,) array
                         at 16 kHz (sha256 and bandwidth measured on it)
    -> speech            WebRTC VAD on the volume-normalised samples, long silences dropped
                         (speech_seconds); no speech, too little, noise-like or a steady tone
                         are refused
    -> encoder.prepare   chunks for the encoder (GE2E: windows of the trimmed speech)

Memory: the recording is held once at 16 kHz (4 bytes a sample) plus the trimmed speech
(GE2E compacts it in place) and the features; every intermediate is computed in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from speakerdb._quality import speech_bandwidth_hz
from speakerdb.errors import AudioError, NoSpeechError, TooLittleSpeechError, UsageError
from speakerdb.model._audio import SAMPLE_RATE, AudioInput, collect_resampled, open_source
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._preprocess import (
    MEL_HOP,
    MEL_WINDOW,
    VAD_WINDOW,
    power_spectrogram_chunks,
    speech_mask,
    vad_flags,
    volume_gain,
)

__all__ = [
    "MIN_SPEECH_SECONDS",
    "PreparedUtterance",
    "decoded_digest",
    "flatness_band_hz",
    "prepare_utterance",
]

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
Measured on the band the recording really has (:func:`flatness_band_hz`).
"""

MIN_LOUDNESS_RANGE_DB = 1.0
"""Speech rises and falls from syllable to syllable; a signal whose 25 ms frame energies stay
within this range (10th to 90th percentile, in dB) is a steady tone, buzz or sweep. The
flattest development recording (noisy read speech) spans 2.7 dB, synthetic tones under 0.1."""

_BAND_EDGE = 0.9  # share of the Nyquist frequency a resampler leaves untouched, at least
_COMPACT_WINDOWS = 1 << 12  # VAD windows copied at a time when trimming


@dataclass(frozen=True)
class PreparedUtterance:
    """A recording ready for the encoder.

    chunks: the encoder's inputs, each (T_i, F) float32 (GE2E: (160, 40) mel windows);
    source: path or ``<array>``; sha256: digest of the decoded samples at 16 kHz (resampled
    by the model's resampler); duration: seconds of decoded audio; speech_seconds: seconds
    left after silence trimming; bandwidth_hz: the decoded audio's bandwidth in Hz
    (:func:`speakerdb._quality.speech_bandwidth_hz`, a quality measure for calibration),
    None when it cannot be measured; head: the first samples of the recording at 16 kHz as
    a countermeasure decodes it (resampled with torchaudio's default filter, which is not
    every encoder's), before any trimming, (min(n, head_samples),) float32, when asked for;
    head_bandwidth_hz / head_seconds: bandwidth_hz and duration of the whole recording
    resampled that way (the same numbers for audio at 16 kHz already). What a countermeasure
    scores, so that it need not decode the file again.
    """

    chunks: list[torch.Tensor] = field(repr=False)
    source: str
    sha256: str
    duration: float
    speech_seconds: float
    bandwidth_hz: float | None = None
    head: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    head_bandwidth_hz: float | None = None
    head_seconds: float | None = None

    @property
    def windows(self) -> torch.Tensor:
        """The chunks stacked, (n_chunks, T, F) -- for equal-length chunks (GE2E windows)."""
        return torch.stack(self.chunks)


def prepare_utterance(
    source: AudioInput,
    sample_rate: int | None = None,
    encoder: SpeakerEncoder | None = None,
    *,
    max_seconds: float | None = None,
    head_samples: int = 0,
) -> PreparedUtterance:
    """Decode, check and prepare one recording for ``encoder`` (default: GE2E's front end).

    source / sample_rate: see :func:`speakerdb.model._audio.load_audio`. max_seconds: the
    duration limit (see :func:`speakerdb.model._audio.max_audio_seconds`). head_samples: keep
    that many first samples as ``head``, resampled the countermeasure's way (see
    :class:`PreparedUtterance`): audio at another rate than 16 kHz goes through a second
    resampler beside the encoder's, from the same decoded blocks.

    Raises the AudioError subclasses of load_audio (TooLongError past the limit), plus
    NoSpeechError when VAD finds no speech or the signal is noise
    (:data:`MAX_SPECTRAL_FLATNESS`) or a steady tone (:data:`MIN_LOUDNESS_RANGE_DB`), and
    TooLittleSpeechError below :data:`MIN_SPEECH_SECONDS` or below what the model needs.
    """
    if encoder is None:
        encoder = _ge2e_front_end()
    stream = open_source(source, sample_rate, max_seconds)
    label = stream.source
    feed, finish = encoder.stream_resampler(stream.rate)
    tee = _Tee(stream.rate, feed, finish) if head_samples and stream.rate != SAMPLE_RATE else None
    if tee is not None:
        feed, finish = tee.feed, tee.finish
    samples, digest = collect_resampled(stream, feed, finish)
    if samples.size and not samples.flags.writeable:
        samples = samples.copy()
    duration = samples.size / SAMPLE_RATE
    bandwidth = _bandwidth(samples)
    head = head_bandwidth = head_seconds = None
    if tee is not None:
        theirs = tee.samples()
        head, head_bandwidth = theirs[:head_samples].copy(), _bandwidth(theirs)
        head_seconds = theirs.size / SAMPLE_RATE
    elif head_samples:
        # A copy: GE2E trims ``samples`` in place below.
        head, head_bandwidth, head_seconds = samples[:head_samples].copy(), bandwidth, duration

    gain = volume_gain(samples)
    flags = vad_flags(samples, gain)
    keep = speech_mask(flags) if flags.size else flags
    # GE2E wants the trimmed speech and not the recording: trim in place, no second copy.
    speech = _trim(samples, keep, gain, in_place=encoder.uses_trimmed_speech)
    if speech.size == 0:
        raise NoSpeechError(label, "no speech detected")
    speech_seconds = speech.size / SAMPLE_RATE
    if speech_seconds < MIN_SPEECH_SECONDS:
        raise TooLittleSpeechError(
            label,
            f"too little speech: {speech_seconds:.2f} s after silence trimming, "
            f"at least {MIN_SPEECH_SECONDS} s needed",
        )
    _check_speech_like(speech, stream.rate, label)
    try:
        chunks = encoder.prepare(speech if encoder.uses_trimmed_speech else samples)
    except AudioError as exc:  # the family does not know the file's name
        raise type(exc)(label, exc.reason) from None
    return PreparedUtterance(
        chunks=chunks,
        source=label,
        sha256=digest,
        duration=duration,
        speech_seconds=speech_seconds,
        bandwidth_hz=bandwidth,
        head=head,
        head_bandwidth_hz=head_bandwidth,
        head_seconds=head_seconds,
    )


class _Tee:
    """The encoder's resampler (``feed``, ``finish``) with the countermeasure's beside it on
    the same blocks: one decode, two resamplings. The countermeasure's whole recording is
    kept (for its bandwidth; at 16 kHz float32, as the encoder's)."""

    def __init__(
        self,
        rate: int,
        feed: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
        finish: Callable[[], npt.NDArray[np.float32]],
    ) -> None:
        from speakerdb.model._resampling import TORCHAUDIO_DEFAULT, StreamResampler

        self._theirs = StreamResampler(rate, SAMPLE_RATE, TORCHAUDIO_DEFAULT)
        self._feed, self._finish = feed, finish
        self._parts: list[npt.NDArray[np.float32]] = []

    def feed(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self._parts.append(self._theirs.feed(block))
        return self._feed(block)

    def finish(self) -> npt.NDArray[np.float32]:
        self._parts.append(self._theirs.finish())
        return self._finish()

    def samples(self) -> npt.NDArray[np.float32]:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)


def decoded_digest(
    source: AudioInput, encoder: SpeakerEncoder, *, max_seconds: float | None = None
) -> str:
    """The sha256 of ``source`` decoded and resampled to 16 kHz as ``encoder``'s family does
    it: the digest :func:`prepare_utterance` gives the same recording with that encoder
    (each family resamples its own way, so the digest is per family). Only decodes: no
    speech detection, no features. Raises the AudioError subclasses of decoding."""
    stream = open_source(source, None, max_seconds)
    feed, finish = encoder.stream_resampler(stream.rate)
    return collect_resampled(stream, feed, finish)[1]


def _trim(
    samples: npt.NDArray[np.float32],
    keep: npt.NDArray[np.bool_],
    gain: np.float32 | None,
    *,
    in_place: bool,
) -> npt.NDArray[np.float32]:
    """The 30 ms windows of ``samples`` that ``keep`` marks, times ``gain``, concatenated:
    (480 * keep.sum(),) float32. ``in_place`` overwrites ``samples`` (each kept window moves
    to a position at or before its own, after it has been read)."""
    kept = int(keep.sum()) * VAD_WINDOW
    out = samples if in_place else np.empty(kept, np.float32)
    written = 0
    for first in range(0, keep.size, _COMPACT_WINDOWS):
        mask = keep[first : first + _COMPACT_WINDOWS]
        region = samples[first * VAD_WINDOW : (first + mask.size) * VAD_WINDOW]
        block = region.reshape(-1, VAD_WINDOW)[mask].ravel()  # a copy
        if gain is not None:
            block = block * gain
        out[written : written + block.size] = block
        written += block.size
    return out[:kept]


def flatness_band_hz(rate: int) -> float:
    """Highest frequency (Hz) the spectral-flatness check looks at for audio recorded at
    ``rate`` Hz: 90 % of the lower of its Nyquist frequency and 8 kHz.

    Resampling leaves nothing above the input's band (8 kHz input upsampled to 16 kHz) or
    near 8 kHz (44.1 kHz input, filtered below 7.56 kHz): those empty bins would make white
    noise look as uneven as speech."""
    return _BAND_EDGE * min(rate / 2, SAMPLE_RATE / 2)


def _check_speech_like(speech: npt.NDArray[np.float32], rate: int, label: str) -> None:
    """Refuse noise (median spectral flatness within the recorded band) and steady tones
    (small loudness range) that VAD let through, computed frame by frame in chunks."""
    real_frames = 1 + speech.size // MEL_HOP
    top_bin = int(flatness_band_hz(rate) * MEL_WINDOW / SAMPLE_RATE)
    # Per-frame values go into arrays allocated once: small tensors kept per chunk would pin
    # the allocator's freed chunk buffers and grow the heap with the recording's length.
    flatness_all = np.empty(real_frames, np.float64)
    energy_all = np.empty(real_frames, np.float64)
    done = 0
    with torch.inference_mode():
        for power in power_spectrogram_chunks(speech):
            bins = power[1 : top_bin + 1].double() + 1e-12
            flat = torch.exp(torch.log(bins).mean(0)) / bins.mean(0)
            energy = 10.0 * torch.log10(power.sum(0).double() + 1e-12)
            flatness_all[done : done + flat.shape[0]] = flat.numpy()
            energy_all[done : done + flat.shape[0]] = energy.numpy()
            done += flat.shape[0]
        flatness = float(torch.from_numpy(flatness_all).median())
        energy_db = torch.from_numpy(energy_all)
        if flatness > MAX_SPECTRAL_FLATNESS:
            raise NoSpeechError(
                label,
                f"no speech detected: the signal is noise-like (spectral flatness {flatness:.2f})",
            )
        spread = float(torch.quantile(energy_db, 0.9) - torch.quantile(energy_db, 0.1))
    if spread < MIN_LOUDNESS_RANGE_DB:
        raise NoSpeechError(
            label, f"no speech detected: a steady tone or buzz (loudness varies {spread:.1f} dB)"
        )


def _bandwidth(samples: np.ndarray) -> float | None:
    """Bandwidth of the decoded 16 kHz samples, measured on the whole recording (silences
    carry little power); None if it cannot be measured, which only disables calibration."""
    try:
        return speech_bandwidth_hz(samples, SAMPLE_RATE)
    except UsageError:
        return None


_FRONT_END: SpeakerEncoder | None = None


def _ge2e_front_end() -> SpeakerEncoder:
    global _FRONT_END
    if _FRONT_END is None:
        from speakerdb.model._ge2e import GE2ESpeakerEncoder

        _FRONT_END = GE2ESpeakerEncoder(None)
    return _FRONT_END
