"""Measuring a model on labelled trials: EER, minDCF, thresholds, and the scores behind them."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb import scoring
from speakerdb.enroll._lists import ManifestEntry, Trial
from speakerdb.errors import UsageError

__all__ = [
    "CalibrationFigures",
    "EvaluationReport",
    "ScoredTrial",
    "calibration_figures",
    "summarise",
    "trials_from_manifest",
]


@dataclass(frozen=True)
class ScoredTrial:
    label: int
    score: float
    a: str
    b: str


@dataclass
class EvaluationReport:
    """Error rates of the rule ``score >= threshold`` on labelled trials.

    Rates are fractions (0-1). ``threshold`` is the threshold at the EER; ``min_dcf`` is the
    normalised minimum detection cost at p_target 0.01 (``min_dcf_p05`` at 0.05);
    ``threshold_at_far`` is the lowest threshold with false-accept rate <= ``far``.
    ``threshold_in_use`` is what verify/compare/identify use on this database now, with the
    FAR and FRR it gives on these trials. Trials with an unusable file are not scored; the
    files are listed in ``failed_files`` with the reason.
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
) -> EvaluationReport:
    """Compute every figure of an :class:`EvaluationReport` from scored trials."""
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
        far_at_threshold_in_use=float(np.mean(non >= threshold_in_use)),
        frr_at_threshold_in_use=float(np.mean(tgt < threshold_in_use)),
        model=model,
        normalization=normalization,
        failed_files=[
            {"path": path, "code": code, "reason": reason}
            for path, (code, reason) in failed.items()
        ],
        scores=scored,
    )


def write_scores(report: EvaluationReport, path: Path) -> None:
    """One line per scored trial: ``label score path_a path_b``."""
    lines = [f"{t.label} {t.score:.6f} {t.a} {t.b}\n" for t in report.scores]
    path.write_text("".join(lines))


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
