"""Measuring a model on labelled trials: EER, minDCF, thresholds, the decisions of the rule
in use and, when calibrated, the quality of its LLRs (Cllr, minCllr, actual DCF); fitting a
calibration on such trials."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb import scoring
from speakerdb._calibration import Calibration, fit_calibration
from speakerdb._private_files import write_private
from speakerdb._results import DecisionRule
from speakerdb.decisions import (
    MIN_NONTARGET_TRIALS,
    MIN_TARGET_TRIALS,
    DecisionPolicy,
    Side,
    trial_quality,
)
from speakerdb.enroll._lists import ManifestEntry, Trial, TrialCounts, count_trials
from speakerdb.errors import UsageError

if TYPE_CHECKING:
    from speakerdb._identity import ModelIdentity

__all__ = [
    "MIN_TARGET_SPEAKERS",
    "CalibrationFigures",
    "CalibrationResult",
    "EvaluationReport",
    "ScoredTrial",
    "ScoredTrials",
    "calibration_figures",
    "summarise",
    "trials_digest",
    "trials_from_manifest",
]


MIN_TARGET_SPEAKERS = 2
"""Fewest speakers the same-speaker trials of ``calibrate`` come from (recordings joined by
same-speaker trials count as one speaker): a calibration seen on one voice only says
nothing of the others. A floor, like the trial minimums, not a figure tuned on data."""


@dataclass(frozen=True)
class ScoredTrial:
    """One scored trial: ``score`` on the score scale (cosine, or AS-norm z-score), ``llr``
    when a calibration applied."""

    label: int
    score: float
    a: str
    b: str
    llr: float | None = None


@dataclass
class EvaluationReport:
    """Error rates on labelled trials.

    Rates are fractions (0-1). The score figures are those of the scores (cosine, or AS-norm
    z-score): ``threshold`` is the threshold at the EER; ``min_dcf`` is the normalised minimum
    detection cost at p_target 0.01 (``min_dcf_p05`` at 0.05); ``threshold_at_far`` is the
    lowest threshold with false-accept rate <= ``far``.

    The decisions: ``decision_rule`` is the rule verify/compare/identify use on this database
    now (see :class:`speakerdb._results.DecisionRule`; ``calibration`` whose LLRs it compares,
    if any), ``threshold_in_use`` its threshold (an LLR when calibrated), with the FAR and FRR
    of its decisions on these trials. ``calibrated``: when the rule is calibrated, the
    figures of the LLRs (Cllr, minCllr, actual and minimum DCF at the rule's operating point,
    FAR and FRR of its decisions; :class:`CalibrationFigures`). Trials with an unusable file
    are not scored; the files are listed in ``failed_files`` with the reason.
    ``trial_counts``: what the list held, each thing once (:class:`TrialCounts`: a trial
    and its mirror are one trial; repeated lines are counted, not scored twice).
    """

    trials: int
    target_trials: int
    nontarget_trials: int
    skipped_trials: int
    eer: float
    threshold: float
    min_dcf: float
    min_dcf_threshold: float
    min_dcf_p05: float
    far: float
    threshold_at_far: float
    frr_at_far: float
    threshold_in_use: float
    far_at_threshold_in_use: float
    frr_at_threshold_in_use: float
    model: str
    normalization: str | None = None
    failed_files: list[dict[str, str]] = field(default_factory=list)
    scores: list[ScoredTrial] = field(default_factory=list, repr=False)
    decision_rule: dict[str, Any] | None = None
    calibration: str | None = None
    calibrated: CalibrationFigures | None = None
    trial_counts: TrialCounts | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("scores")
        return out

    def target_scores(self) -> npt.NDArray[np.float64]:
        return np.array([t.score for t in self.scores if t.label == 1])

    def nontarget_scores(self) -> npt.NDArray[np.float64]:
        return np.array([t.score for t in self.scores if t.label == 0])


def trials_from_manifest(entries: list[ManifestEntry]) -> list[Trial]:
    """Every pair of distinct files of a manifest, labelled same / different by speaker."""
    if len(entries) < 2:
        raise UsageError("a manifest needs at least two files to make trials")
    return [
        Trial(a.path, b.path, int(a.speaker == b.speaker), 0)
        for a, b in itertools.combinations(entries, 2)
    ]


def summarise(
    scored: list[ScoredTrial],
    skipped: int,
    failed: dict[str, tuple[str, str]],
    far: float,
    threshold_in_use: float,
    model: str,
    normalization: str | None,
    *,
    accepted: Sequence[bool] | None = None,
    rule: DecisionRule | None = None,
    trial_counts: TrialCounts | None = None,
) -> EvaluationReport:
    """Compute every figure of an :class:`EvaluationReport` from scored trials.

    accepted: the decisions taken on each trial (default: score >= threshold_in_use). rule:
    the rule in use; when it is calibrated, the calibration figures are computed from the
    trials' LLRs (those that have one).
    """
    tgt = np.array([t.score for t in scored if t.label == 1], dtype=np.float64)
    non = np.array([t.score for t in scored if t.label == 0], dtype=np.float64)
    if tgt.size == 0 or non.size == 0:
        raise UsageError(
            f"evaluation needs both same-speaker and different-speaker trials that could be "
            f"scored (got {tgt.size} and {non.size}; {len(failed)} files failed)"
        )
    eer, eer_threshold = scoring.eer(tgt, non)
    dcf, dcf_threshold = scoring.min_dcf(tgt, non, p_target=0.01)
    dcf05, _ = scoring.min_dcf(tgt, non, p_target=0.05)
    at_far = scoring.threshold_at_far(non, far)
    labels = np.array([t.label for t in scored])
    taken = (
        np.array([scoring.accept(t.score, threshold_in_use) for t in scored])
        if accepted is None
        else np.asarray(accepted, dtype=bool)
    )
    calibrated = None
    if rule is not None and rule.score == "llr":
        calibrated = _llr_figures(scored, rule)
    return EvaluationReport(
        trials=len(scored),
        target_trials=int(tgt.size),
        nontarget_trials=int(non.size),
        skipped_trials=skipped,
        eer=eer,
        threshold=eer_threshold,
        min_dcf=dcf,
        min_dcf_threshold=dcf_threshold,
        min_dcf_p05=dcf05,
        far=far,
        threshold_at_far=at_far,
        frr_at_far=float(np.mean(tgt < at_far)),
        threshold_in_use=threshold_in_use,
        far_at_threshold_in_use=float(np.mean(taken[labels == 0])),
        frr_at_threshold_in_use=float(np.mean(~taken[labels == 1])),
        model=model,
        normalization=normalization,
        failed_files=[
            {"path": path, "code": code, "reason": reason}
            for path, (code, reason) in failed.items()
        ],
        scores=scored,
        decision_rule=rule.to_dict() if rule is not None else None,
        calibration=rule.calibration if rule is not None else None,
        calibrated=calibrated,
        trial_counts=trial_counts,
    )


def _llr_figures(scored: list[ScoredTrial], rule: DecisionRule) -> CalibrationFigures | None:
    """The calibration figures of the trials that have an LLR, at the rule's operating point
    (its prior and costs; p_target 0.01 with unit costs when the threshold comes from a
    false-accept rate or was given). None unless both classes have LLRs."""
    tgt = [t.llr for t in scored if t.label == 1 and t.llr is not None]
    non = [t.llr for t in scored if t.label == 0 and t.llr is not None]
    if not tgt or not non:
        return None
    return calibration_figures(
        tgt,
        non,
        p_target=rule.p_target or 0.01,
        c_miss=rule.c_miss or 1.0,
        c_fa=rule.c_fa or 1.0,
        threshold=rule.threshold,
    )


def write_scores(report: EvaluationReport, path: Path) -> None:
    """One line per scored trial: ``label score path_a path_b`` (how alike two people's
    recordings are: mode 0600, replaced atomically)."""
    lines = [f"{t.label} {t.score:.6f} {t.a} {t.b}\n" for t in report.scores]
    write_private(path, "".join(lines))


@dataclass(frozen=True)
class CalibrationFigures:
    """How good calibrated scores (LLRs) are on labelled trials, at one operating point.

    Rates are fractions. ``eer`` / ``min_dcf`` / ``min_cllr`` treat the LLRs as scores (what
    the best threshold or monotonic recalibration could reach); ``act_dcf``, ``far`` and
    ``frr`` are those of the decisions ``llr >= threshold`` actually taken (``threshold``: the
    Bayes threshold of p_target / c_miss / c_fa unless another was given); ``cllr`` (bits) is
    the log-loss of the LLRs themselves, ``cllr - min_cllr`` what miscalibration costs.
    """

    target_trials: int
    nontarget_trials: int
    eer: float
    min_dcf: float
    act_dcf: float
    threshold: float
    far: float
    frr: float
    cllr: float
    min_cllr: float
    p_target: float
    c_miss: float
    c_fa: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_figures(
    target_llrs: npt.ArrayLike,
    nontarget_llrs: npt.ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    threshold: float | None = None,
) -> CalibrationFigures:
    """Compute :class:`CalibrationFigures` from the LLRs of target and non-target trials,
    (n,) and (m,) float arrays. Raises UsageError without both kinds of trials."""
    tgt = np.asarray(target_llrs, dtype=np.float64).ravel()
    non = np.asarray(nontarget_llrs, dtype=np.float64).ravel()
    used = scoring.bayes_threshold(p_target, c_miss, c_fa) if threshold is None else threshold
    return CalibrationFigures(
        target_trials=int(tgt.size),
        nontarget_trials=int(non.size),
        eer=scoring.eer(tgt, non)[0],
        min_dcf=scoring.min_dcf(tgt, non, p_target, c_miss, c_fa)[0],
        act_dcf=scoring.act_dcf(tgt, non, p_target, c_miss, c_fa, threshold=used),
        threshold=float(used),
        far=float(np.mean(non >= used)),
        frr=float(np.mean(tgt < used)),
        cllr=scoring.cllr(tgt, non),
        min_cllr=scoring.min_cllr(tgt, non),
        p_target=p_target,
        c_miss=c_miss,
        c_fa=c_fa,
    )


@dataclass(frozen=True)
class CalibrationResult:
    """What :meth:`SpeakerDB.calibrate` stored. kind: "llr" (a calibration fitted on the
    trials, ``calibration``) or "threshold" (a threshold on the score scale). rule: the
    decision rule now in use; report: the evaluation of the trials with it (in-sample)."""

    kind: str
    rule: DecisionRule
    report: EvaluationReport
    calibration: Calibration | None = None

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "decision_rule": self.rule.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "evaluation": self.report.to_dict(),
        }


def trials_digest(trials: Sequence[Trial]) -> str:
    """sha256 of a trial list as ``label path_a path_b`` lines, for lists that do not come
    from a file (the CLI hashes the file itself)."""
    digest = hashlib.sha256()
    for t in trials:
        digest.update(f"{t.label} {t.a} {t.b}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ScoredTrials:
    """Usable labelled trials, scored: per trial its raw cosine, its score on the policy's
    scale (the cosine, or the AS-norm z-score), and the quality of its two files (``enrolls``
    is file a, ``probes`` file b: the calibration's features are symmetric). ``skipped``:
    trials with an unusable file, listed in ``failed`` (path -> (code, reason)). ``counts``:
    the distinct trials, recordings and speakers of the list they came from."""

    trials: list[Trial]
    cosines: list[float]
    scores: list[float]
    probes: list[Side]
    enrolls: list[Side]
    skipped: int
    failed: dict[str, tuple[str, str]]
    counts: TrialCounts | None = None

    def summary(
        self, policy: DecisionPolicy, far: float, model: str, normalization: str | None
    ) -> EvaluationReport:
        """The :class:`EvaluationReport` of these trials under ``policy``."""
        decisions = policy.decide(self.cosines, self.scores, self.probes, self.enrolls)
        scored = [
            ScoredTrial(int(t.label or 0), score, str(t.a), str(t.b), d.llr)
            for t, score, d in zip(self.trials, self.scores, decisions, strict=True)
        ]
        return summarise(
            scored,
            skipped=self.skipped,
            failed=self.failed,
            far=far,
            threshold_in_use=policy.rule.threshold,
            model=model,
            normalization=normalization,
            accepted=[d.accepted for d in decisions],
            rule=policy.rule,
            trial_counts=self.counts,
        )

    def fit(
        self, identity: ModelIdentity, *, p_fit: float, score: str, trials_sha256: str
    ) -> tuple[Calibration, int]:
        """Fit a calibration on these trials (those whose files' quality is known; distinct,
        as the facade gives them). Returns it and how many trials it was fitted on. Raises
        UsageError for fewer than :data:`MIN_TARGET_TRIALS` same-speaker trials (from
        :data:`MIN_TARGET_SPEAKERS` speakers) or :data:`MIN_NONTARGET_TRIALS`
        different-speaker trials."""
        usable = [
            i
            for i, (p, e) in enumerate(zip(self.probes, self.enrolls, strict=True))
            if p.known and e.known
        ]
        labels = np.array([int(self.trials[i].label or 0) for i in usable])
        counts = count_trials(self.trials[i] for i in usable)
        targets, impostors = counts.target_trials, counts.nontarget_trials
        described = (
            f"{targets} same-speaker trials of {counts.speakers} speaker(s) and {impostors} "
            f"different-speaker trials, {counts.recordings} recordings"
        )
        if (
            targets < MIN_TARGET_TRIALS
            or impostors < MIN_NONTARGET_TRIALS
            or counts.speakers < MIN_TARGET_SPEAKERS
        ):
            ignored = self.counts.ignored() if self.counts is not None else ""
            raise UsageError(
                f"too few trials to calibrate (each counted once): {described} could be scored"
                + (f" ({ignored})" if ignored else "")
                + f"; at least {MIN_TARGET_TRIALS} same-speaker trials of "
                f"{MIN_TARGET_SPEAKERS} speakers and {MIN_NONTARGET_TRIALS} different-speaker "
                "trials are needed"
            )
        inputs = trial_quality(
            [self.scores[i] for i in usable],
            [self.probes[i] for i in usable],
            [self.enrolls[i] for i in usable],
        )
        calibration = fit_calibration(
            inputs,
            labels,
            model={
                "name": identity.name,
                "weights_sha256": identity.weights_sha256,
                "dimension": identity.dimension,
            },
            p_fit=p_fit,
            trials_sha256=trials_sha256,
            note=f"speakerdb calibrate: {described} (distinct)",
            score=score,
        )
        return calibration, len(usable)
