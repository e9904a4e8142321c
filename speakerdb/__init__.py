"""speakerdb: a speaker enrollment database.

    from speakerdb import load_model, SpeakerDB
    model = load_model()                        # GE2E, CUDA if available
    model.get_embedding("a.wav")                # (256,) float32, unit norm
    model.verify_speakers("a.wav", "b.wav")     # bool
    with SpeakerDB.open("team.sqlite") as db:
        db.enroll("alice", ["a1.wav", "a2.wav"])
        db.verify("alice", "call.wav")

The names exported here are the public API; everything in a module whose name starts with
an underscore is private and may change. Heavy modules (torch, SQLAlchemy, numpy) load on
first use of the names that need them, so ``import speakerdb`` is quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb import errors
from speakerdb._identity import ModelIdentity
from speakerdb._lazy import load_lazily
from speakerdb.errors import SpeakerDBError
from speakerdb.model._registry import DEFAULT_MODEL, available_models, load_model, model_identity

if TYPE_CHECKING:
    from speakerdb._private_files import write_private
    from speakerdb._progress import ProgressBar
    from speakerdb._results import (
        Comparison,
        DecisionRule,
        Identification,
        Match,
        Verification,
    )
    from speakerdb.decisions._options import DecisionOptions
    from speakerdb.enroll._evaluation import EvaluationReport
    from speakerdb.enroll._facade import SpeakerDB
    from speakerdb.enroll._lists import ManifestEntry, Trial, read_manifest, read_trials
    from speakerdb.enroll._reembed import MissingRecording, ReembedReport
    from speakerdb.enroll._reports import (
        RECOMMENDED_SPEECH_SECONDS,
        EnrollmentReport,
        EnrollmentWarning,
        InputReport,
        ManifestSummary,
    )
    from speakerdb.model._countermeasure import (
        Countermeasure,
        CountermeasureIdentity,
        SpoofScore,
        load_countermeasure,
    )
    from speakerdb.model._embedder import EmbeddedAudio, Embedder
    from speakerdb.storage._audit import AuditCheck, AuditEntry, acting_as
    from speakerdb.storage._check import CheckReport
    from speakerdb.storage._countermeasure_record import CountermeasureRecord
    from speakerdb.storage._index_cache import IndexStatus
    from speakerdb.storage._keys import ApiKeyRecord, NewApiKey
    from speakerdb.storage._migrate import UpgradeResult, upgrade_database
    from speakerdb.storage._records import SpeakerRecord, UtteranceRecord

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MODEL",
    "RECOMMENDED_SPEECH_SECONDS",
    "ApiKeyRecord",
    "AuditCheck",
    "AuditEntry",
    "CheckReport",
    "Comparison",
    "Countermeasure",
    "CountermeasureIdentity",
    "CountermeasureRecord",
    "DecisionOptions",
    "DecisionRule",
    "EmbeddedAudio",
    "Embedder",
    "EnrollmentReport",
    "EnrollmentWarning",
    "EvaluationReport",
    "Identification",
    "IndexStatus",
    "InputReport",
    "ManifestEntry",
    "ManifestSummary",
    "Match",
    "MissingRecording",
    "ModelIdentity",
    "NewApiKey",
    "ProgressBar",
    "ReembedReport",
    "SpeakerDB",
    "SpeakerDBError",
    "SpeakerRecord",
    "SpoofScore",
    "Trial",
    "UpgradeResult",
    "UtteranceRecord",
    "Verification",
    "__version__",
    "acting_as",
    "available_models",
    "errors",
    "load_countermeasure",
    "load_model",
    "model_identity",
    "read_manifest",
    "read_trials",
    "upgrade_database",
    "write_private",
]

_LAZY = {
    "Comparison": "speakerdb._results",
    "DecisionOptions": "speakerdb.decisions._options",
    "DecisionRule": "speakerdb._results",
    "ProgressBar": "speakerdb._progress",
    "write_private": "speakerdb._private_files",
    "Identification": "speakerdb._results",
    "Match": "speakerdb._results",
    "Verification": "speakerdb._results",
    "EvaluationReport": "speakerdb.enroll._evaluation",
    "SpeakerDB": "speakerdb.enroll._facade",
    "ManifestEntry": "speakerdb.enroll._lists",
    "Trial": "speakerdb.enroll._lists",
    "read_manifest": "speakerdb.enroll._lists",
    "read_trials": "speakerdb.enroll._lists",
    "MissingRecording": "speakerdb.enroll._reembed",
    "ReembedReport": "speakerdb.enroll._reembed",
    "RECOMMENDED_SPEECH_SECONDS": "speakerdb.enroll._reports",
    "EnrollmentReport": "speakerdb.enroll._reports",
    "EnrollmentWarning": "speakerdb.enroll._reports",
    "InputReport": "speakerdb.enroll._reports",
    "ManifestSummary": "speakerdb.enroll._reports",
    "Countermeasure": "speakerdb.model._countermeasure",
    "CountermeasureIdentity": "speakerdb.model._countermeasure",
    "SpoofScore": "speakerdb.model._countermeasure",
    "load_countermeasure": "speakerdb.model._countermeasure",
    "EmbeddedAudio": "speakerdb.model._embedder",
    "Embedder": "speakerdb.model._embedder",
    "AuditCheck": "speakerdb.storage._audit",
    "AuditEntry": "speakerdb.storage._audit",
    "acting_as": "speakerdb.storage._audit",
    "CheckReport": "speakerdb.storage._check",
    "CountermeasureRecord": "speakerdb.storage._countermeasure_record",
    "IndexStatus": "speakerdb.storage._index_cache",
    "ApiKeyRecord": "speakerdb.storage._keys",
    "NewApiKey": "speakerdb.storage._keys",
    "UpgradeResult": "speakerdb.storage._migrate",
    "upgrade_database": "speakerdb.storage._migrate",
    "SpeakerRecord": "speakerdb.storage._records",
    "UtteranceRecord": "speakerdb.storage._records",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
