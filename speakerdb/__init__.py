"""speakerdb: a speaker enrollment database.

    from speakerdb import load_model, SpeakerDB
    model = load_model()                        # GE2E, CUDA if available
    model.get_embedding("a.wav")                # (256,) float32, unit norm
    model.verify_speakers("a.wav", "b.wav")     # bool

Heavy modules (torch, SQLAlchemy) load on first use, so ``import speakerdb`` is quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb import errors
from speakerdb.errors import SpeakerDBError
from speakerdb.identity import ModelIdentity
from speakerdb.model.registry import load_model, model_identity
from speakerdb.results import Comparison, Identification, Match, Verification

if TYPE_CHECKING:
    from speakerdb.enroll.facade import SpeakerDB
    from speakerdb.enroll.reports import EnrollmentReport, InputReport
    from speakerdb.model.embedder import EmbeddedAudio, Embedder

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "EmbeddedAudio",
    "Embedder",
    "EnrollmentReport",
    "Identification",
    "InputReport",
    "Match",
    "ModelIdentity",
    "SpeakerDB",
    "SpeakerDBError",
    "Verification",
    "__version__",
    "errors",
    "load_model",
    "model_identity",
]

_LAZY = {
    "Embedder": "speakerdb.model.embedder",
    "EmbeddedAudio": "speakerdb.model.embedder",
    "SpeakerDB": "speakerdb.enroll.facade",
    "EnrollmentReport": "speakerdb.enroll.reports",
    "InputReport": "speakerdb.enroll.reports",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speakerdb' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
