"""The GE2E speaker encoder (Wan et al., "Generalized End-to-End Loss for Speaker
Verification", 2018): 3-layer LSTM(40 -> 256), Linear(256 -> 256), ReLU, L2 normalisation.

The weights are the pretrained checkpoint shipped inside the ``resemblyzer`` package
(see :mod:`speakerdb.model._weights`), loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from speakerdb.errors import ModelError
from speakerdb.model._audio import SAMPLE_RATE
from speakerdb.model._encoder import Resampling, SpeakerEncoder
from speakerdb.model._ge2e_defaults import GE2E_DEFAULT_THRESHOLD
from speakerdb.model._preprocess import (
    MEL_CHANNELS,
    MEL_HOP,
    mel_from_power,
    power_spectrogram_chunks,
)
from speakerdb.model._resampling import GE2E_RESAMPLING, StreamResampler, resample
from speakerdb.model._windows import WINDOW_FRAMES, window_starts

__all__ = ["EMBEDDING_DIM", "GE2EEncoder", "GE2ESpeakerEncoder", "load_ge2e"]

HIDDEN = 256
LAYERS = 3
EMBEDDING_DIM = 256
# Present in the training checkpoint for the GE2E loss; not part of the encoder.
_TRAINING_ONLY_KEYS = frozenset({"similarity_weight", "similarity_bias"})


class GE2EEncoder(nn.Module):
    """Window encoder. ``forward(mels)``: (B, 160, 40) float32 mel power frames ->
    (B, 256) float32 L2-normalised window embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_CHANNELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING_DIM)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw: torch.Tensor = self.relu(self.linear(hidden[-1]))
        norm: torch.Tensor = torch.linalg.vector_norm(raw, dim=1, keepdim=True)
        return raw / norm.clamp_min(1e-12)

    @classmethod
    def from_checkpoint(cls, path: Path) -> GE2EEncoder:
        """Load a GE2E training checkpoint ({"model_state": state_dict, ...}) strictly: every
        encoder parameter must be present with its exact shape; only the loss's similarity
        parameters may be extra. Raises ModelError otherwise."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelError(f"GE2E weights not found at {path}") from None
        except Exception as exc:  # torch raises plain RuntimeError/UnpicklingError variants
            raise ModelError(f"cannot load GE2E weights from {path}: {exc}") from None
        state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise ModelError(f"{path} is not a GE2E checkpoint (no 'model_state')")
        state = {k: v for k, v in state.items() if k not in _TRAINING_ONLY_KEYS}
        encoder = cls()
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())
            raise ModelError(f"{path} does not match the GE2E architecture: {reason}") from None
        return encoder.eval()


class GE2ESpeakerEncoder(SpeakerEncoder):
    """GE2E behind the SpeakerEncoder interface: its own Kaiser resampler, the trimmed
    speech's 1.6 s windows of 40 mel bands as chunks, and the window network.

    ``network`` may be None for the front end alone (preprocessing needs no weights).
    """

    family: ClassVar[str] = "ge2e"
    uses_trimmed_speech: ClassVar[bool] = True

    def __init__(self, network: GE2EEncoder | None, weights_sha256: str = "") -> None:
        self.network = network.eval() if network is not None else None
        self.dimension = EMBEDDING_DIM
        self.sample_rate = SAMPLE_RATE
        self.default_threshold = GE2E_DEFAULT_THRESHOLD
        self.threshold_note = "calibrated on speakerdb's development sets (README)"
        self.weights_sha256 = weights_sha256
        self.exact_padding = True
        self.device = torch.device("cpu")

    def resample(self, samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
        """Kaiser-windowed sinc (width 24, rolloff 0.945), torchaudio's for common rates;
        bounded for any rate (see :mod:`speakerdb.model._resampling`)."""
        return resample(samples, rate, self.sample_rate, GE2E_RESAMPLING)

    def stream_resampler(self, rate: int) -> Resampling:
        stream = StreamResampler(rate, self.sample_rate, GE2E_RESAMPLING)
        return stream.feed, stream.finish

    def prepare(self, samples: npt.NDArray[np.float32]) -> list[torch.Tensor]:
        """(n,) float32 trimmed, volume-normalised speech at 16 kHz -> its windows, each a
        (160, 40) float32 view of one mel power spectrogram (starts from
        :func:`~speakerdb.model._windows.window_starts`; zero-padded so the last fits)."""
        starts, padded_length = window_starts(samples.size)
        with torch.inference_mode():
            chunks = power_spectrogram_chunks(samples, padded_length)
            first = mel_from_power(next(chunks))
            if first.shape[0] == 1 + padded_length // MEL_HOP:
                mel = first  # one chunk: a short recording
            else:  # filled in place: no second copy of a long recording's spectrogram
                mel = first.new_empty((1 + padded_length // MEL_HOP, first.shape[1]))
                mel[: first.shape[0]] = first
                done = first.shape[0]
                for power in chunks:
                    part = mel_from_power(power)
                    mel[done : done + part.shape[0]] = part
                    done += part.shape[0]
        return [mel[start : start + WINDOW_FRAMES] for start in starts]

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, 160, 40) float32 windows (lengths all 160) -> (B, 256) float32 unit-norm."""
        if self.network is None:
            raise ModelError("this GE2E encoder has no weights (front end only)")
        with torch.inference_mode():
            out: torch.Tensor = self.network(features.to(self.device, non_blocking=True))
        return out

    def to(self, device: torch.device) -> None:
        if self.network is not None:
            self.network.to(device)
        self.device = torch.device(device)


def load_ge2e(path: Path | None = None) -> GE2ESpeakerEncoder:
    """The GE2E encoder from a checkpoint (default: the bundled weights). Raises ModelError."""
    from speakerdb.model._weights import ge2e_weights_path, weights_sha256

    file = ge2e_weights_path() if path is None else Path(path)
    return GE2ESpeakerEncoder(GE2EEncoder.from_checkpoint(file), weights_sha256(file))
