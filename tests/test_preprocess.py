"""GE2E preprocessing pieces against the reference implementation they must reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from speakerdb.model import _preprocess as preprocess
from speakerdb.model._windows import window_starts

pytest.importorskip("resemblyzer", reason="resemblyzer is the reference implementation")


def reference_mask(flags: np.ndarray) -> np.ndarray:
    """Resemblyzer's smoothing and dilation of VAD flags (audio.trim_long_silences)."""
    from scipy.ndimage import binary_dilation

    width = 8
    padded = np.concatenate((np.zeros((width - 1) // 2), flags.astype(float), np.zeros(width // 2)))
    ret = np.cumsum(padded, dtype=float)
    ret[width:] = ret[width:] - ret[:-width]
    mask = np.round(ret[width - 1 :] / width).astype(bool)
    return binary_dilation(mask, np.ones(7))


@settings(max_examples=300, deadline=None)
@given(arrays(np.bool_, st.integers(1, 400)))
def test_speech_mask_matches_reference(flags):
    assert np.array_equal(preprocess.speech_mask(flags), reference_mask(flags))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 16_000 * 60))
def test_window_starts_match_reference(n_samples):
    from resemblyzer import VoiceEncoder

    wav_slices, mel_slices = VoiceEncoder.compute_partial_slices(n_samples, 1.3, 0.75)
    starts, padded = window_starts(n_samples)
    assert starts == [s.start for s in mel_slices]
    assert padded == max(n_samples, wav_slices[-1].stop)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(400, 16_000 * 3))
def test_mel_matches_librosa(seed, n):
    import librosa

    wav = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.1
    ours = preprocess.mel_spectrogram(torch.from_numpy(wav)).numpy()
    theirs = librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, rtol=1e-3, atol=1e-6 * theirs.max())


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-4, 2.0), st.integers(0, 1000))
def test_volume_normalisation_only_increases(gain, seed):
    wav = (np.random.default_rng(seed).standard_normal(16000) * 0.05 * gain).astype(np.float32)
    out = preprocess.normalize_volume(wav)
    rms = lambda x: np.sqrt(np.mean(np.square(x.astype(np.float64))))  # noqa: E731
    target = 10 ** (-30 / 20)
    if rms(wav) < target:
        assert rms(out) == pytest.approx(target, rel=1e-4)
    else:
        assert np.array_equal(out, wav)
