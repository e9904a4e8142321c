"""How a database decides: which score is compared with which threshold, per normalisation.

One rule everywhere: accept iff ``score >= threshold``, where the score is the calibrated
log-likelihood ratio when a calibration applies, else the cosine (or its AS-norm z-score).
:func:`resolve_policy` turns what the database stores (a :class:`StoredSetting`, the
store's calibration row, and its default) and what the caller asks for (one
:class:`~speakerdb.decisions.DecisionOptions`) into a :class:`DecisionPolicy`;
:meth:`DecisionPolicy.decide` applies it to trials whose quality measures are known.

Which calibration applies, for a normalisation:

1. the database's setting for it: a threshold on the score scale (no calibration), or a
   calibration (the bundled one, or the database's own) at an operating point;
2. without a setting, the database's default: the model's bundled calibration at the
   default operating point (p_target 0.01, unit costs) for raw cosine scores, in databases
   created since schema revision 0004 or opted in; none (cosine against the model's
   threshold) in databases created before; and none for AS-norm scores unless the database
   fitted its own calibration of them;
3. ``prior`` or ``far`` given for one call ask for a calibrated decision: the calibration of
   (1)/(2), else the bundled one.

A calibration needs the speech seconds and bandwidth of both sides. Where one is unknown
(a speaker enrolled before revision 0004), that answer falls back to the score rule (the
database's stored threshold, else the model's) and its decision rule says why.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from speakerdb._calibration import (
    DEFAULT_OPERATING_POINT,
    Calibration,
    OperatingPoint,
    TrialQuality,
    bundled_calibration,
)
from speakerdb._identity import ModelIdentity
from speakerdb._results import Decision, DecisionRule
from speakerdb.decisions._options import DecisionOptions, Scale
from speakerdb.decisions._thresholds import model_threshold
from speakerdb.errors import ModelMismatchError, UsageError
from speakerdb.scoring import validate_threshold

__all__ = [
    "MIN_NONTARGET_TRIALS",
    "MIN_TARGET_TRIALS",
    "UNCALIBRATED_MODEL",
    "UNKNOWN_ENROLLMENT_BANDWIDTH",
    "UNKNOWN_PROBE_QUALITY",
    "Decision",
    "DecisionPolicy",
    "Side",
    "StoredSetting",
    "bundled_for",
    "resolve_policy",
    "trial_quality",
]

MIN_TARGET_TRIALS = 50
"""Fewest same-speaker trials ``calibrate`` fits on: about ten per fitted weight (the
score, three quality terms and the bias), the usual floor for a logistic regression."""
MIN_NONTARGET_TRIALS = 200
"""Fewest different-speaker trials ``calibrate`` fits on (the LLR threshold at a target
false-accept rate F further needs 1 / F of them)."""

UNKNOWN_ENROLLMENT_BANDWIDTH = (
    "not calibrated: the enrollment's bandwidth is unknown (recordings enrolled before "
    "schema 0004; re-enroll them to calibrate)"
)

UNCALIBRATED_MODEL = (
    "uncalibrated: the model's toolkit default; calibrate with `speakerdb calibrate TRIALS`"
)

UNKNOWN_PROBE_QUALITY = (
    "not calibrated: the probe's bandwidth or speech duration could not be measured"
)


@dataclass(frozen=True)
class Side:
    """The quality of one side of a trial: speech seconds (summed over a voiceprint's
    recordings), recordings behind it, and audio bandwidth in Hz (None: unknown)."""

    speech_seconds: float | None
    count: int = 1
    bandwidth_hz: float | None = None

    @property
    def known(self) -> bool:
        return (
            self.speech_seconds is not None
            and self.speech_seconds > 0
            and self.bandwidth_hz is not None
            and self.count >= 1
        )


def trial_quality(
    scores: Sequence[float], probes: Sequence[Side], enrolls: Sequence[Side]
) -> TrialQuality:
    """The calibration inputs of n trials whose sides are all :attr:`Side.known`."""
    if not all(p.known and e.known for p, e in zip(probes, enrolls, strict=True)):
        raise UsageError("calibration needs the speech seconds and bandwidth of both sides")
    return TrialQuality.of(
        scores,
        [float(p.speech_seconds or 0.0) for p in probes],
        [float(e.speech_seconds or 0.0) for e in enrolls],
        [e.count for e in enrolls],
        [float(p.bandwidth_hz or 0.0) for p in probes],
        [float(e.bandwidth_hz or 0.0) for e in enrolls],
    )


@dataclass(frozen=True)
class DecisionPolicy:
    """The rules of one normalisation. ``score_rule``: the score scale's rule (used without a
    calibration, and for trials a calibration cannot take). ``calibration`` / ``llr_rule``:
    the calibration in use and its rule on LLRs (both None without one)."""

    norm: Scale
    score_rule: DecisionRule
    calibration: Calibration | None = None
    llr_rule: DecisionRule | None = None

    @property
    def normalization(self) -> str | None:
        """The normalisation as answers name it (None: raw cosine scores)."""
        return self.norm.normalization

    @property
    def rule(self) -> DecisionRule:
        """The rule for trials whose quality is known."""
        return self.llr_rule if self.llr_rule is not None else self.score_rule

    def llrs(
        self, scores: Sequence[float], probes: Sequence[Side], enrolls: Sequence[Side]
    ) -> npt.NDArray[np.float64]:
        """(n,) LLRs of n trials (scores on the calibration's scale), NaN where a side's
        quality is unknown or there is no calibration."""
        out = np.full(len(scores), np.nan)
        if self.calibration is None:
            return out
        known = [
            i for i, (p, e) in enumerate(zip(probes, enrolls, strict=True)) if p.known and e.known
        ]
        if known:
            inputs = trial_quality(
                [scores[i] for i in known], [probes[i] for i in known], [enrolls[i] for i in known]
            )
            out[known] = self.calibration.llrs(inputs)
        return out

    def decide(
        self,
        cosines: Sequence[float],
        scores: Sequence[float],
        probes: Sequence[Side],
        enrolls: Sequence[Side],
    ) -> list[Decision]:
        """Decide n trials: (n,) raw cosines, (n,) scores on the policy's scale (the cosine,
        or the AS-norm z-score), and each trial's probe and enrollment quality."""
        llrs = self.llrs(scores, probes, enrolls)
        out = []
        for i, llr in enumerate(llrs):
            if self.llr_rule is not None and math.isfinite(llr):
                out.append(Decision(cosines[i], float(llr), float(llr), self.llr_rule))
            else:
                rule = self.score_rule
                if self.llr_rule is not None:
                    rule = rule.with_note(_why_not(probes[i]))
                out.append(Decision(cosines[i], None, float(scores[i]), rule))
        return out


def _why_not(probe: Side) -> str:
    return UNKNOWN_ENROLLMENT_BANDWIDTH if probe.known else UNKNOWN_PROBE_QUALITY


@functools.lru_cache(maxsize=8)
def bundled_for(identity_key: tuple[str, str, int]) -> Calibration | None:
    """The bundled calibration of a model (name, weights sha256, dimension), or None."""
    return bundled_calibration(*identity_key)


class StoredSetting(Protocol):
    """What a database stores about how it decides for one normalisation (the store's
    ``CalibrationSetting`` row): ``kind`` "threshold" (``threshold`` on the score scale) or
    "llr" (``source`` "bundled", "database" or "self", whose ``calibration`` is the JSON dict,
    at the operating point ``p_target`` / ``c_miss`` / ``c_fa`` or ``target_far``)."""

    @property
    def kind(self) -> str: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def calibration(self) -> dict[str, Any] | None: ...
    @property
    def p_target(self) -> float | None: ...
    @property
    def c_miss(self) -> float | None: ...
    @property
    def c_fa(self) -> float | None: ...
    @property
    def target_far(self) -> float | None: ...


def resolve_policy(
    identity: ModelIdentity,
    options: DecisionOptions,
    default: str = "bundled",
    setting: StoredSetting | None = None,
) -> DecisionPolicy:
    """The decision policy for one call (see the module docstring for the order of things).

    identity: the model whose scores are decided. options: the caller's choices (threshold,
    operating point, normalisation), validated when they were made. default / setting: what the
    database stores ("bundled" and None without a database, as a new one).

    Raises UsageError for bad values or a calibrated decision nobody can make (AS-norm
    scores without a calibration of them), ModelMismatchError when the database's
    calibration belongs to another model.
    """
    norm = options.norm
    score_threshold, score_origin = model_threshold(identity, norm), "model_default"
    calibration: Calibration | None = None
    source: str | None = None
    point = DEFAULT_OPERATING_POINT
    target_far: float | None = None
    if setting is not None and setting.threshold is not None:
        # The database's own threshold on the score scale: its rule, or (next to a
        # calibration) the rule of the answers the calibration cannot take.
        score_threshold, score_origin = setting.threshold, "database"
    if setting is not None and setting.kind == "llr":
        source = setting.source
        if source in ("database", "self"):
            calibration = Calibration.from_dict(setting.calibration or {})
        else:
            calibration = bundled_for(identity.key)
        if setting.target_far is not None:
            target_far = setting.target_far
        else:
            point = OperatingPoint(
                _or(setting.p_target, DEFAULT_OPERATING_POINT.p_target),
                _or(setting.c_miss, 1.0),
                _or(setting.c_fa, 1.0),
            )
    elif setting is None and default in ("bundled", "auto") and norm is Scale.COSINE:
        calibration, source = bundled_for(identity.key), "bundled"
    if options.operating_point_given:
        if calibration is None:
            if norm is not Scale.COSINE:
                raise UsageError(
                    f"no calibration of {norm} scores here: fit one with "
                    f"`speakerdb calibrate TRIALS --norm {norm}`"
                )
            calibration, source = bundled_for(identity.key), "bundled"
            if calibration is None:
                raise UsageError(
                    f"model {identity.label} has no bundled calibration: fit one with "
                    "`speakerdb calibrate TRIALS`"
                )
        if options.prior is not None:
            point, target_far = OperatingPoint(options.prior), None
        else:
            target_far = options.far
    if calibration is None:
        source = None
    if calibration is not None:
        _check_calibration(calibration, identity, norm)

    threshold = options.threshold
    if threshold is not None and calibration is None:
        score_threshold, score_origin = _given(threshold, norm), "given"
    score_rule = DecisionRule(norm, float(score_threshold), score_origin)
    if score_origin == "model_default" and bundled_for(identity.key) is None:
        # A bring-your-own model: its threshold is its toolkit's default, not calibrated.
        score_rule = score_rule.with_note(UNCALIBRATED_MODEL)
    if calibration is None:
        return DecisionPolicy(norm, score_rule)
    # A calibration fitted here is named with its fit date: refitting shows in every answer.
    fitted = calibration.fit.created if source in ("database", "self") else None
    if threshold is not None:
        llr_rule = DecisionRule(Scale.LLR, _finite(threshold), "given", source, fitted=fitted)
    elif target_far is not None:
        llr_rule = DecisionRule(
            Scale.LLR,
            _threshold_at_far(calibration, target_far),
            "target_far",
            source,
            far=target_far,
            fitted=fitted,
        )
    else:
        llr_rule = DecisionRule(
            Scale.LLR,
            point.threshold,
            "operating_point",
            source,
            p_target=point.p_target,
            c_miss=point.c_miss,
            c_fa=point.c_fa,
            fitted=fitted,
        )
    return DecisionPolicy(norm, score_rule, calibration, llr_rule)


def _check_calibration(calibration: Calibration, identity: ModelIdentity, score: str) -> None:
    if not calibration.matches(*identity.key):
        model = calibration.model
        raise ModelMismatchError(
            f"this database's calibration was fitted on scores of model {model.get('name')}:"
            f"{str(model.get('weights_sha256'))[:12]}, not {identity.label}: fit another "
            "(speakerdb calibrate TRIALS) or return to the bundled one (calibrate --reset)"
        )
    if calibration.score != score:
        raise UsageError(f"the calibration maps {calibration.score} scores, not {score} scores")


def _threshold_at_far(calibration: Calibration, far: float) -> float:
    if not 0.0 < far < 1.0:
        raise UsageError(f"the target false-accept rate must be in (0, 1), not {far}")
    impostors = calibration.fit.nontarget_trials
    if far * impostors < 1:
        # 1 / far overflows for subnormal rates: say how many trials in words, not by ceil().
        needed = 1.0 / far if far > 1e-300 else math.inf
        count = f"{math.ceil(needed)}" if needed < 1e15 else f"{needed:.3g}"
        raise UsageError(
            f"a false-accept rate of {far:g} needs a calibration fitted on at least "
            f"{count} different-speaker trials (this one saw {impostors})"
        )
    return calibration.threshold_at_far(far)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _given(threshold: float, norm: Scale) -> float:
    if norm is Scale.COSINE:
        return validate_threshold(threshold)
    return _finite(threshold)


def _finite(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"threshold must be a number, not {value!r}") from None
    if not math.isfinite(out):
        raise UsageError(f"threshold must be a finite number, not {value!r}")
    return out
