"""Resampling the way SpeechBrain and WeSpeaker do it: ``torchaudio.transforms.Resample``
at its defaults (Hann-windowed sinc, lowpass width 6, rolloff 0.99, kernel computed in float64
and cast to float32). A different resampler alone moves embeddings (cosine 0.95-0.99), so the
families that follow these frameworks use this one, not speakerdb's GE2E resampler."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["torchaudio_resample"]


@functools.lru_cache(maxsize=16)
def _torchaudio_resampler(rate: int, new_rate: int) -> torch.nn.Module:
    import torchaudio

    # torchaudio's defaults, as SpeechBrain's AudioNormalizer and WeSpeaker use them.
    resampler: torch.nn.Module = torchaudio.transforms.Resample(orig_freq=rate, new_freq=new_rate)
    return resampler


def torchaudio_resample(
    samples: npt.NDArray[np.float32], rate: int, new_rate: int
) -> npt.NDArray[np.float32]:
    """(n,) float32 at ``rate`` -> (m,) float32 at ``new_rate`` with
    ``torchaudio.transforms.Resample(rate, new_rate)`` at its defaults (identity if equal)."""
    if rate == new_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    with torch.inference_mode():
        tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, :]
        out = _torchaudio_resampler(int(rate), int(new_rate))(tensor)
    return np.ascontiguousarray(out[0].numpy())
