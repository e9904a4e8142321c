"""Decisions, in one place: what a caller asks (:class:`DecisionOptions`, on a
:class:`Scale`), how a database decides (:func:`resolve_policy` into a
:class:`DecisionPolicy` of :class:`~speakerdb.DecisionRule` values) and the one test,
``score >= threshold`` (:func:`speakerdb.scoring.accept`).

Layout: ``_options`` (the options value and the score scale), ``_policy`` (from options and
what the database stores to the rule, and the trials it decides), and the pure-numpy
modules every layer shares beside it -- :mod:`speakerdb.scoring` (scores, the accept test,
error rates), :mod:`speakerdb._calibration` (LLRs, operating points, the bundled
calibrations) and :mod:`speakerdb._results` (the rule and the decided results). Names load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from speakerdb._lazy import load_lazily

if TYPE_CHECKING:
    from speakerdb.decisions._options import (
        DEFAULT_COHORT_SIZE,
        NORMALIZATIONS,
        CohortItem,
        DecisionOptions,
        Scale,
    )
    from speakerdb.decisions._policy import (
        MIN_NONTARGET_TRIALS,
        MIN_TARGET_TRIALS,
        UNCALIBRATED_MODEL,
        UNKNOWN_ENROLLMENT_BANDWIDTH,
        UNKNOWN_PROBE_QUALITY,
        Decision,
        DecisionPolicy,
        Side,
        StoredSetting,
        bundled_for,
        resolve_policy,
        trial_quality,
    )
    from speakerdb.decisions._thresholds import DEFAULT_ASNORM_THRESHOLD, model_threshold

__all__ = [
    "DEFAULT_ASNORM_THRESHOLD",
    "DEFAULT_COHORT_SIZE",
    "MIN_NONTARGET_TRIALS",
    "MIN_TARGET_TRIALS",
    "NORMALIZATIONS",
    "UNCALIBRATED_MODEL",
    "UNKNOWN_ENROLLMENT_BANDWIDTH",
    "UNKNOWN_PROBE_QUALITY",
    "CohortItem",
    "Decision",
    "DecisionOptions",
    "DecisionPolicy",
    "Scale",
    "Side",
    "StoredSetting",
    "bundled_for",
    "model_threshold",
    "resolve_policy",
    "trial_quality",
]

_HOMES = {
    "speakerdb.decisions._options": (
        "DEFAULT_COHORT_SIZE",
        "NORMALIZATIONS",
        "CohortItem",
        "DecisionOptions",
        "Scale",
    ),
    "speakerdb.decisions._thresholds": ("DEFAULT_ASNORM_THRESHOLD", "model_threshold"),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names} | {
    name: "speakerdb.decisions._policy"
    for name in __all__
    if not any(name in names for names in _HOMES.values())
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: the result types import the score scale from here.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
