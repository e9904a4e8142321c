"""The models speakerdb knows, by name. Identities are known without loading torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from speakerdb._identity import ModelIdentity
from speakerdb.errors import ModelError, UsageError
from speakerdb.model._weights import ge2e_weights_path, weights_sha256

if TYPE_CHECKING:
    import torch

    from speakerdb.model._embedder import Embedder

__all__ = [
    "DEFAULT_MODEL",
    "GE2E_DEFAULT_ASNORM_THRESHOLD",
    "GE2E_DEFAULT_THRESHOLD",
    "NORMALIZATIONS",
    "available_models",
    "default_threshold",
    "load_model",
    "model_identity",
]

DEFAULT_MODEL = "ge2e"

GE2E_DEFAULT_THRESHOLD = 0.82
"""Calibrated decision threshold of the bundled GE2E model on raw cosine scores: on each
read-speech development set, the threshold at 1 % false accepts of impostor recordings
against 3-recording voiceprints; the highest of them (benchmarks/calibrate_default.py;
README, "Accuracy and calibration")."""

GE2E_DEFAULT_ASNORM_THRESHOLD = 4.33
"""The same rule applied to AS-norm scores (a cohort of 120 LibriSpeech speakers)."""

NORMALIZATIONS = ("none", "asnorm")


def default_threshold(name: str = DEFAULT_MODEL, normalization: str | None = None) -> float:
    """A model's calibrated threshold for raw cosine scores or for a score normalisation."""
    key = normalization or "none"
    if key not in NORMALIZATIONS:
        raise UsageError(f"normalisation must be one of {', '.join(NORMALIZATIONS)}, not {key!r}")
    if key == "asnorm":
        model_identity(name)  # validates the name
        return GE2E_DEFAULT_ASNORM_THRESHOLD
    return model_identity(name).default_threshold


_MODELS = ("ge2e",)


def available_models() -> tuple[str, ...]:
    return _MODELS


def model_identity(name: str = DEFAULT_MODEL) -> ModelIdentity:
    """Identity (name, weights sha256, dimension, default threshold) of a known model."""
    if name != "ge2e":
        raise ModelError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    return ModelIdentity(
        name="ge2e",
        weights_sha256=weights_sha256(ge2e_weights_path()),
        dimension=256,
        default_threshold=GE2E_DEFAULT_THRESHOLD,
    )


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device | None = None) -> Embedder:
    """Load an embedding model. ``device``: None picks CUDA when available, else CPU.

    Raises ModelError for unknown names or missing/malformed weights, ConfigurationError for
    an unusable device.
    """
    identity = model_identity(name)
    from speakerdb.model._device import resolve_device
    from speakerdb.model._embedder import Embedder
    from speakerdb.model._ge2e import GE2EEncoder, GE2ESpeakerEncoder

    network = GE2EEncoder.from_checkpoint(ge2e_weights_path())
    return Embedder(
        GE2ESpeakerEncoder(network, identity.weights_sha256), identity, resolve_device(device)
    )
