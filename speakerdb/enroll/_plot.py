"""DET curve and score histograms of an evaluation, as a PNG (needs matplotlib:
``pip install 'speakerdb[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from speakerdb.enroll._evaluation import EvaluationReport
from speakerdb.enroll._sasv import SasvReport
from speakerdb.errors import MissingDependencyError
from speakerdb.scoring import error_rates

__all__ = ["plot_evaluation", "plot_sasv"]

_TICKS = [0.0001, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
_FLOOR = 0.0001  # rates of 0 are drawn on the axis at 0.01 %


def _probit(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values, _FLOOR, 1 - _FLOOR)
    inv = NormalDist().inv_cdf
    return np.array([inv(float(v)) for v in clipped])


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib: pip install 'speakerdb[plot]'"
        ) from None
    return plt


def _det_axes(det: Any) -> None:
    ticks = _probit(np.array(_TICKS))
    labels = [f"{t:.2%}" if t < 0.001 else f"{t:.1%}" for t in _TICKS]
    det.set_xticks(ticks, labels)
    det.set_yticks(ticks, labels)
    margin = 0.1
    det.set_xlim(ticks[0] - margin, ticks[-1])
    det.set_ylim(ticks[0] - margin, ticks[-1])
    det.set_xlabel("false-accept rate")
    det.set_ylabel("false-reject rate")
    det.grid(True, alpha=0.4)
    det.legend(loc="upper right", fontsize=8)


def plot_evaluation(report: EvaluationReport, path: Path, title: str | None = None) -> Path:
    """Draw the DET curve (miss vs false-alarm rate on normal-deviate axes) with the EER point
    and the threshold in use, next to the target / non-target score histograms."""
    plt = _pyplot()
    tgt, non = report.target_scores(), report.nontarget_scores()
    rates = error_rates(tgt, non)
    figure, (det, hist) = plt.subplots(1, 2, figsize=(12, 5.2))
    det.plot(_probit(rates.far), _probit(rates.frr), color="C0", label="DET")
    det.plot(
        *_probit(np.array([report.eer, report.eer])),
        "o",
        color="C3",
        label=f"EER {report.eer:.2%} (threshold {report.threshold:.3f})",
    )
    used_far, used_frr = report.far_at_threshold_in_use, report.frr_at_threshold_in_use
    rule_text = (report.decision_rule or {}).get("text") or (
        f"threshold {report.threshold_in_use:.3f}"
    )
    det.plot(
        *_probit(np.array([used_far, used_frr])),
        "s",
        color="C2",
        label=f"in use: {rule_text} (FAR {used_far:.2%}, FRR {used_frr:.2%})",
    )
    _det_axes(det)
    det.set_title("DET curve")
    bins = np.linspace(min(tgt.min(), non.min()), max(tgt.max(), non.max()), 60)
    hist.hist(non, bins=bins, alpha=0.6, density=True, label=f"different speakers ({non.size})")
    hist.hist(tgt, bins=bins, alpha=0.6, density=True, label=f"same speaker ({tgt.size})")
    rule = report.decision_rule or {}
    if rule.get("score", "llr") != "llr":  # an LLR threshold has no place on the score axis
        hist.axvline(report.threshold_in_use, color="C2", linestyle="--", label="threshold in use")
    hist.axvline(report.threshold, color="C3", linestyle=":", label="threshold at EER")
    hist.set_xlabel(
        "score" + (f" ({report.normalization})" if report.normalization else " (cosine)")
    )
    hist.set_ylabel("density")
    hist.legend(fontsize=8)
    hist.set_title("score distributions")
    figure.suptitle(
        title
        or f"{report.model}: {report.trials} trials, EER {report.eer:.2%}, "
        f"minDCF(0.01) {report.min_dcf:.3f}"
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_sasv(report: SasvReport, path: Path, title: str | None = None) -> Path:
    """Draw the spoofing-aware DET curves of an ``eval --sasv`` run on one pair of
    normal-deviate axes: the speaker check (bona fide targets vs other speakers, on the
    speaker margin), the countermeasure (bona fide targets vs attacks, on the spoof margin;
    trials it did not judge left out) and the joint decision (targets vs everyone else, on
    the smaller margin), each with its point at the decision in use (margin 0).
    Raises MissingDependencyError without matplotlib, UsageError when a curve lacks a class."""
    from speakerdb.errors import UsageError

    plt = _pyplot()
    kind = np.asarray(report.kinds)
    spk = np.asarray(report.speaker_margin, dtype=np.float64)
    spf = np.asarray(report.spoof_margin, dtype=np.float64)
    target, nontarget, attack = (kind == k for k in ("target", "nontarget", "spoof"))
    judged = np.isfinite(spf)
    curves = [
        ("speaker check", spk[target], spk[nontarget], "C0"),
        ("countermeasure", spf[target & judged], spf[attack & judged], "C1"),
        ("joint (SASV)", np.minimum(spk, spf)[target], np.minimum(spk, spf)[~target], "C3"),
    ]
    figure, det = plt.subplots(figsize=(7, 6))
    drawn = 0
    for name, positive, negative, color in curves:
        if positive.size == 0 or negative.size == 0:
            continue
        rates = error_rates(positive, negative)
        det.plot(_probit(rates.far), _probit(rates.frr), color=color, label=name)
        far, frr = float(np.mean(negative >= 0)), float(np.mean(positive < 0))
        det.plot(
            *_probit(np.array([far, frr])),
            "s",
            color=color,
            label=f"{name} in use: FAR {far:.2%}, FRR {frr:.2%}",
        )
        drawn += 1
    if drawn == 0:
        plt.close(figure)
        raise UsageError("no DET curve to draw: the trials lack targets or impostors")
    _det_axes(det)
    counts = ", ".join(f"{k} {v}" for k, v in report.trials.items())
    det.set_title(title or f"SASV DET ({counts})")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
