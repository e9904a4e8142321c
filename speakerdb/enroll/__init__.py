"""The SpeakerDB facade and what it composes: enrollment bookkeeping, AS-norm cohorts,
evaluation, list files. Private modules; the names below are this layer's public ones (the
library's are exported by :mod:`speakerdb`), loaded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb._lazy import load_lazily

if TYPE_CHECKING:
    from speakerdb.enroll._evaluation import EvaluationReport, trials_from_manifest, write_scores
    from speakerdb.enroll._facade import SpeakerDB
    from speakerdb.enroll._lists import ManifestEntry, Trial, read_manifest, read_pairs, read_trials
    from speakerdb.enroll._plot import plot_evaluation, plot_sasv
    from speakerdb.enroll._reports import (
        RECOMMENDED_SPEECH_SECONDS,
        EnrollmentReport,
        ManifestSummary,
    )

__all__ = [
    "RECOMMENDED_SPEECH_SECONDS",
    "EnrollmentReport",
    "EvaluationReport",
    "ManifestEntry",
    "ManifestSummary",
    "SpeakerDB",
    "Trial",
    "plot_evaluation",
    "plot_sasv",
    "read_manifest",
    "read_pairs",
    "read_trials",
    "trials_from_manifest",
    "write_scores",
]

_LAZY = {
    "EvaluationReport": "speakerdb.enroll._evaluation",
    "trials_from_manifest": "speakerdb.enroll._evaluation",
    "write_scores": "speakerdb.enroll._evaluation",
    "SpeakerDB": "speakerdb.enroll._facade",
    "ManifestEntry": "speakerdb.enroll._lists",
    "Trial": "speakerdb.enroll._lists",
    "read_manifest": "speakerdb.enroll._lists",
    "read_pairs": "speakerdb.enroll._lists",
    "read_trials": "speakerdb.enroll._lists",
    "plot_evaluation": "speakerdb.enroll._plot",
    "plot_sasv": "speakerdb.enroll._plot",
    "EnrollmentReport": "speakerdb.enroll._reports",
    "ManifestSummary": "speakerdb.enroll._reports",
    "RECOMMENDED_SPEECH_SECONDS": "speakerdb.enroll._reports",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
