"""Model layer: audio decoding, speech checks, model families and the batched Embedder.

Knows nothing of SQL. Private modules; the names below are this layer's public ones (the
library's are exported by :mod:`speakerdb`), loaded on first use so that importing a module
of this package never loads torch by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb._lazy import load_lazily

if TYPE_CHECKING:
    from speakerdb.model._audio import AudioInput
    from speakerdb.model._embedder import DEFAULT_BATCH_SIZE, EmbeddedAudio, Embedder
    from speakerdb.model._registry import (
        DEFAULT_MODEL,
        FAMILIES,
        available_models,
        describe_model,
        load_model,
        model_identity,
    )

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MODEL",
    "FAMILIES",
    "AudioInput",
    "EmbeddedAudio",
    "Embedder",
    "available_models",
    "describe_model",
    "load_model",
    "model_identity",
]

_LAZY = {
    "AudioInput": "speakerdb.model._audio",
    "DEFAULT_BATCH_SIZE": "speakerdb.model._embedder",
    "EmbeddedAudio": "speakerdb.model._embedder",
    "Embedder": "speakerdb.model._embedder",
    "DEFAULT_MODEL": "speakerdb.model._registry",
    "FAMILIES": "speakerdb.model._registry",
    "available_models": "speakerdb.model._registry",
    "describe_model": "speakerdb.model._registry",
    "load_model": "speakerdb.model._registry",
    "model_identity": "speakerdb.model._registry",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
