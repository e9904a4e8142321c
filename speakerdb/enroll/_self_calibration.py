"""Self-calibration: a database calibrates its decisions on its own enrollments.

:func:`calibrate_from_enrollments` builds trials from the enrolled recordings
(:mod:`._enrollment_trials`), fits a calibration shrunk toward the bundled one, and stores it
as the database's calibration with source "self" (the fit's date and counts inside it, and a
summary of the enrollments it saw). In auto mode (``store_state.calibration_default`` "auto")
:func:`refit_if_due` runs before each decision: once the database has enough enrollments it
fits, and it re-fits when they changed enough (:func:`changed_enough`). Every answer's
``decision_rule`` names the calibration ("self") and its fit date, so a decision never moves
without it showing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speakerdb._calibration import DEFAULT_OPERATING_POINT, Calibration
from speakerdb.decisions import DecisionOptions, Side, bundled_for, resolve_policy
from speakerdb.enroll._enrollment_trials import (
    MIN_SELF_SPEAKERS,
    MIN_SELF_VOICEPRINTS,
    SHRINK_SPEAKERS,
    EnrollmentTrials,
    build_trials,
    fit_self_calibration,
)
from speakerdb.enroll._evaluation import CalibrationResult, ScoredTrials
from speakerdb.enroll._lists import Trial
from speakerdb.errors import UsageError
from speakerdb.scoring import DEFAULT_COHORT_TOP_N, MIN_COHORT
from speakerdb.storage._enrollment_rows import (
    AUTO_DEFAULT,
    EnrollmentState,
    enrollment_rows,
    enrollment_state,
    set_calibration_default,
)
from speakerdb.storage._records import CalibrationSetting

if TYPE_CHECKING:
    from speakerdb.enroll._base import FacadeBase

__all__ = [
    "REFIT_CHANGE",
    "SELF_TARGET_FAR",
    "calibrate_from_enrollments",
    "changed_enough",
    "refit_if_due",
    "self_calibration_status",
    "set_auto",
]

REFIT_CHANGE = 0.2
"""Auto mode re-fits when the speakers with two or more recordings, or all speakers, changed
by this share since the fit (or any recording was deleted)."""

SELF_TARGET_FAR: float | None = None
"""The default operating point of a self-calibration: None keeps the Bayes threshold at
p_target 0.01 (ln 99), as the bundled calibration. The alternative, the LLR at which 1 % of
the enrollment trials' different-speaker side is accepted, was measured and rejected: with
the few speakers a database starts with, that estimate is far too loose (held-out file-pair
FAR 7-50 % on the read and phone sets, against <= 1 % at ln 99 with the default form;
docs/calibration.md)."""

SOURCE = "self"


def calibrate_from_enrollments(
    db: FacadeBase,
    *,
    prior: float | None = None,
    far: float | None = None,
    norm: str | None = None,
) -> CalibrationResult:
    """Fit and store the self-calibration (see the module). prior / far: the operating point
    (default: :data:`SELF_TARGET_FAR`, else p_target 0.01). norm "asnorm": calibrate AS-norm
    z-scores instead (trials normalised against the other enrolled speakers, see
    :func:`~._enrollment_trials.build_trials`), stored as the database's calibration of
    AS-norm scores (``verify --norm asnorm``, ``diarize --norm asnorm``); it needs
    :data:`~speakerdb.scoring.MIN_COHORT` speakers besides the two of a trial. Returns the
    rule now in use and the in-sample report on the enrollment trials. Raises UsageError
    when the database is too small (saying how much is needed), read-only, or the options
    are bad."""
    if prior is not None and far is not None:
        raise UsageError("give a prior or a target false-accept rate, not both")
    if db.store.read_only:
        raise UsageError(f"cannot self-calibrate: {db.store.location.display} was opened read-only")
    if norm not in (None, "asnorm"):
        raise UsageError(f"self-calibration maps raw cosine or asnorm scores, not {norm!r}")
    setting, calibration, trials = _fit(db, prior, far, norm)
    identity = db.identity
    # Checks the operating point (a FAR needs enough impostor trials) before anything is stored.
    options = DecisionOptions.of(norm=norm)
    policy = resolve_policy(identity, options, setting=setting)
    mode = db.store.calibration_setting(None)[0]
    db.store.set_calibration(setting)
    if mode == AUTO_DEFAULT:  # storing a calibration resets the default; keep auto mode on
        set_calibration_default(db.store, AUTO_DEFAULT)
    report = _scored(trials).summary(policy, 0.01 if far is None else far, identity.label, None)
    return CalibrationResult("llr", policy.rule, report, calibration)


def _fit(
    db: FacadeBase, prior: float | None, far: float | None, norm: str | None = None
) -> tuple[CalibrationSetting, Calibration, EnrollmentTrials]:
    identity = db.identity
    db.store.check_model(identity)
    state, _ = enrollment_state(db.store)
    rows = enrollment_rows(db.store, identity.dimension)
    trials = build_trials(
        rows.vectors,
        rows.speaker_ids,
        rows.speech_seconds,
        rows.bandwidth_hz,
        asnorm_top_n=DEFAULT_COHORT_TOP_N if norm == "asnorm" else None,
    )
    if norm == "asnorm" and trials.speakers - 2 < MIN_COHORT:
        raise UsageError(
            f"too few enrollments to self-calibrate AS-norm scores: {trials.speakers} "
            f"speakers (need {MIN_COHORT + 2}: a cohort of {MIN_COHORT} besides the two "
            "speakers of each trial)"
        )
    p_fit = DEFAULT_OPERATING_POINT.p_target if prior is None else float(prior)
    calibration = fit_self_calibration(
        trials,
        model={
            "name": identity.name,
            "weights_sha256": identity.weights_sha256,
            "dimension": identity.dimension,
        },
        prior=bundled_for(identity.key),
        p_fit=p_fit,
        state=json.dumps(state.to_dict(), sort_keys=True),
        form="asnorm" if norm == "asnorm" else None,
    )
    if prior is None and far is None:
        far = SELF_TARGET_FAR
    stored = calibration.to_dict() | {"enrollments": state.to_dict()}
    setting = CalibrationSetting(
        normalization=norm or "none",
        kind="llr",
        threshold=db.store.threshold(norm)[0],
        source=SOURCE,
        calibration=stored,
        p_target=None if far is not None else p_fit,
        c_miss=None if far is not None else 1.0,
        c_fa=None if far is not None else 1.0,
        target_far=far,
        trials_sha256=calibration.fit.trials_sha256,
        target_trials=calibration.fit.target_trials,
        nontarget_trials=calibration.fit.nontarget_trials,
        note=f"self-calibrated on {trials.describe()}",
    )
    return setting, calibration, trials


def _scored(trials: EnrollmentTrials) -> ScoredTrials:
    """The enrollment trials in the shape of a trial list, for the usual report (a trial's
    two 'paths' name the probe speaker and the voiceprint side: no file is involved)."""
    inputs = trials.inputs
    n = len(inputs)
    rows = [
        Trial(Path(f"voiceprint-{k}"), Path(f"speaker-{int(trials.groups[k])}"), int(y), k + 1)
        for k, y in enumerate(trials.labels.tolist())
    ]
    scores = inputs.score.tolist()
    probes = [
        Side(float(inputs.probe_seconds[k]), 1, float(inputs.probe_bandwidth_hz[k]))
        for k in range(n)
    ]
    enrolls = [
        Side(
            float(inputs.enroll_seconds[k]),
            int(inputs.enroll_count[k]),
            float(inputs.enroll_bandwidth_hz[k]),
        )
        for k in range(n)
    ]
    return ScoredTrials(rows, scores, scores, probes, enrolls, 0, {})


def changed_enough(fitted: EnrollmentState, now: EnrollmentState, surviving: int) -> bool:
    """Whether enrollments moved enough since a fit to re-fit: a recording deleted
    (``surviving``, the recordings with an id up to the fit's highest, fell below the fit's
    count), or the speakers with two or more recordings, or all speakers, changed by
    :data:`REFIT_CHANGE` or more."""
    if surviving < fitted.recordings:
        return True
    for before, after in ((fitted.eligible, now.eligible), (fitted.speakers, now.speakers)):
        if abs(after - before) >= REFIT_CHANGE * max(before, 1):
            return True
    return False


def _ready(state: EnrollmentState) -> bool:
    return state.eligible >= MIN_SELF_SPEAKERS and state.speakers >= MIN_SELF_VOICEPRINTS


def refit_if_due(
    db: FacadeBase, default: str, setting: CalibrationSetting | None
) -> CalibrationSetting | None:
    """In auto mode, before a decision: fit when the database first has enough enrollments,
    re-fit when they changed enough, drop the self-calibration when too few remain (the
    bundled one decides again). Returns the setting that now applies. A user's own choice
    (a calibration on trials, a threshold, the bundled one opted into) is left alone, as is
    a read-only database."""
    if default != AUTO_DEFAULT or db.store.read_only:
        return setting
    if setting is not None and setting.source != SOURCE:
        return setting
    fitted = None
    if setting is not None:
        fitted = EnrollmentState.from_dict((setting.calibration or {}).get("enrollments"))
    now, surviving = enrollment_state(db.store, None if fitted is None else fitted.max_utterance_id)
    if fitted is not None and not changed_enough(fitted, now, surviving):
        return setting
    if not _ready(now):
        if setting is not None:
            db.store.clear_calibration(None)
        return None
    keep_far = setting.target_far if setting is not None else None
    keep_prior = setting.p_target if setting is not None and keep_far is None else None
    try:
        fresh, _, _ = _fit(db, keep_prior, keep_far)
    except UsageError:
        # Enough speakers by count but not after dropping near-duplicates: the bundled
        # calibration decides; the next decision looks again.
        if setting is not None:
            db.store.clear_calibration(None)
        return None
    db.store.set_calibration(fresh)
    set_calibration_default(db.store, AUTO_DEFAULT)
    return fresh


def set_auto(db: FacadeBase, on: bool) -> None:
    """Turn auto mode on (fit when enough, re-fit when enrollments change) or off (the
    stored calibration, if any, stays as it is)."""
    set_calibration_default(db.store, AUTO_DEFAULT if on else "bundled")


def self_calibration_status(
    db: FacadeBase, default: str, setting: CalibrationSetting | None
) -> dict[str, Any]:
    """JSON-compatible: auto mode, the enrollments now, whether they are enough (and the
    minimums), and for a stored self-calibration the enrollments it was fitted on."""
    now, _ = enrollment_state(db.store)
    fitted = None
    if setting is not None and setting.source == SOURCE:
        fitted = EnrollmentState.from_dict((setting.calibration or {}).get("enrollments"))
    return {
        "auto": default == AUTO_DEFAULT,
        "enrollments": now.to_dict(),
        "enough": _ready(now),
        "needs": {
            "speakers_with_2_recordings": MIN_SELF_SPEAKERS,
            "speakers": MIN_SELF_VOICEPRINTS,
        },
        "shrinkage_speakers": SHRINK_SPEAKERS,
        "fitted_on": None if fitted is None else fitted.to_dict(),
    }
