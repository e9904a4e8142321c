"""The GE2E speaker encoder (Wan et al., "Generalized End-to-End Loss for Speaker
Verification", 2018): 3-layer LSTM(40 -> 256), Linear(256 -> 256), ReLU, L2 normalisation.

The weights are the pretrained checkpoint shipped inside the ``resemblyzer`` package
(see :mod:`speakerdb.model._weights`), loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speakerdb.errors import ModelError
from speakerdb.model._preprocess import MEL_CHANNELS

__all__ = ["EMBEDDING_DIM", "GE2EEncoder"]

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
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

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
