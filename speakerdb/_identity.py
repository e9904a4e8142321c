"""Model identity: what every stored vector records about the model that made it.

Kept free of torch so that the storage layer can check identities without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelIdentity"]


@dataclass(frozen=True)
class ModelIdentity:
    """Name, weights hash and output dimension of an embedding model, plus its calibrated
    default threshold (a cosine score in [-1, 1]).

    Two identities denote the same model iff ``key`` is equal; the threshold is a property
    of the model, not part of what makes vectors comparable.
    """

    name: str
    weights_sha256: str
    dimension: int
    default_threshold: float

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.name, self.weights_sha256, self.dimension)

    @property
    def label(self) -> str:
        """Short human-readable form, e.g. ``ge2e:39373b86598f``."""
        return f"{self.name}:{self.weights_sha256[:12]}"

    def same_model(self, other: ModelIdentity) -> bool:
        return self.key == other.key
