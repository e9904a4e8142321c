"""Model identity: what every stored vector records about the model that made it.

Kept free of torch so that the storage layer can check identities without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelIdentity"]


@dataclass(frozen=True)
class ModelIdentity:
    """Name, weights hash and output dimension of an embedding model, plus its default
    threshold (a cosine score in [-1, 1]).

    Two identities denote the same model iff ``key`` is equal; the threshold is a property
    of the model, not part of what makes vectors comparable.

    family: "ge2e", "nemo", "speechbrain" or "onnx" (the name of a built-in model is its
    family). source: the file or folder a bring-your-own model was loaded from (None for a
    built-in model). threshold_note: where ``default_threshold`` comes from (e.g. the original
    toolkit's default converted to a cosine). These three describe the model; they are not
    part of its identity (the same weights moved elsewhere are the same model).
    """

    name: str
    weights_sha256: str
    dimension: int
    default_threshold: float
    family: str = field(default="", compare=False)
    source: str | None = field(default=None, compare=False)
    threshold_note: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.name, self.weights_sha256, self.dimension)

    @property
    def label(self) -> str:
        """Short human-readable form, e.g. ``ge2e:39373b86598f``."""
        return f"{self.name}:{self.weights_sha256[:12]}"

    @property
    def built_in(self) -> bool:
        """True for a model speakerdb ships (loaded by name, not from a path)."""
        return self.source is None

    def same_model(self, other: ModelIdentity) -> bool:
        return self.key == other.key
