"""Calibration: from a cosine score and the quality of both sides to a log-likelihood ratio.

A raw cosine does not mean the same thing everywhere: one model's scores shift with speech
duration, channel and language. A calibration maps each trial to

    llr = sum_k weight_k * feature_k + bias         (natural log, ln p(x|same) / p(x|different))

where the features are the score and quality measures of the two sides (see :data:`FEATURES`),
fitted by prior-weighted logistic regression on labelled trials (BOSARIS / NIST SRE practice).
Decisions then take one rule everywhere: accept iff ``llr >= threshold``, the threshold being
the Bayes threshold of an :class:`OperatingPoint` (a target prior and two costs) or, as an
alternative, the LLR at which the fitted impostor trials reach a chosen false-accept rate.

The inputs of every trial (:class:`TrialQuality`) are cheap and known when embedding:

- ``score``: the cosine of the two voiceprints (:func:`speakerdb.scoring.cosine_scores`);
- ``probe_seconds``: the probe's speech seconds after silence trimming (the engine reports
  ``speech_seconds`` per recording);
- ``enroll_seconds``: the enrollment side's speech seconds, summed over its recordings (for
  file-vs-file comparison, the other file's);
- ``enroll_count``: how many recordings the enrollment voiceprint averages (1 for a file).

A :class:`Calibration` belongs to one model (name, weights sha256, dimension) and serialises to a
small JSON-compatible dict (:meth:`Calibration.to_dict`) that a database can store.

Pure numpy: no torch, no SQL.
"""

from __future__ import annotations

import datetime
import importlib.resources
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb import scoring
from speakerdb.errors import ModelError, UsageError

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_OPERATING_POINT",
    "DEFAULT_REGULARISATION",
    "FAR_GRID",
    "FEATURES",
    "FORMAT",
    "SCORES",
    "Calibration",
    "FitSummary",
    "OperatingPoint",
    "SideQuality",
    "TrialQuality",
    "bundled_calibration",
    "enrollment_quality",
    "feature_matrix",
    "fit_calibration",
    "group_weights",
    "newton_logistic",
    "standardisation",
]

FORMAT = "speakerdb-calibration/1"
"""The ``format`` tag of :meth:`Calibration.to_dict`; bumped when the dict's meaning changes."""

Array = npt.NDArray[np.float64]

SCORES = ("cosine", "asnorm")
"""What the ``score`` input of a calibration is: the raw cosine, or its AS-norm z-score
(:func:`speakerdb.scoring.as_norm`). A calibration maps one kind only."""


_INPUTS = (
    "score",
    "probe_seconds",
    "enroll_seconds",
    "enroll_count",
    "probe_bandwidth_hz",
    "enroll_bandwidth_hz",
)


@dataclass(frozen=True)
class TrialQuality:
    """The inputs of a calibration for n trials, each a (n,) float64 array.

    score: cosine in [-1, 1]. probe_seconds / enroll_seconds: speech seconds (> 0) of the
    probe and of the enrollment side (summed over its recordings). enroll_count: recordings
    behind the enrollment voiceprint (>= 1). probe_bandwidth_hz / enroll_bandwidth_hz:
    :func:`speakerdb._quality.speech_bandwidth_hz` of the probe and of the enrollment side
    (its recordings' values averaged, weighted by speech seconds); NaN where unknown, which
    only a calibration without bandwidth features accepts. Build with :meth:`of`, which
    broadcasts scalars.
    """

    score: Array
    probe_seconds: Array
    enroll_seconds: Array
    enroll_count: Array
    probe_bandwidth_hz: Array
    enroll_bandwidth_hz: Array

    @classmethod
    def of(
        cls,
        score: npt.ArrayLike,
        probe_seconds: npt.ArrayLike,
        enroll_seconds: npt.ArrayLike,
        enroll_count: npt.ArrayLike = 1,
        probe_bandwidth_hz: npt.ArrayLike = np.nan,
        enroll_bandwidth_hz: npt.ArrayLike = np.nan,
    ) -> TrialQuality:
        """Broadcast the inputs to one length and validate them.

        Raises UsageError for non-finite scores, non-positive durations, counts below 1 or
        bandwidths that are neither NaN (unknown) nor positive.
        """
        values = (
            score,
            probe_seconds,
            enroll_seconds,
            enroll_count,
            probe_bandwidth_hz,
            enroll_bandwidth_hz,
        )
        try:
            arrays = np.broadcast_arrays(
                *(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in values)
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"calibration inputs do not fit together: {exc}") from None
        if any(a.ndim != 1 for a in arrays):
            raise UsageError("calibration inputs must be scalars or 1-D arrays")
        s, p, e, c, pb, eb = (np.array(a) for a in arrays)  # broadcast views are read-only
        if not np.all(np.isfinite(s)):
            raise UsageError("calibration needs finite scores")
        for name, seconds in (("probe", p), ("enrollment", e)):
            if not np.all(np.isfinite(seconds) & (seconds > 0)):
                raise UsageError(f"{name} speech seconds must be positive and finite")
        if not np.all(np.isfinite(c) & (c >= 1)):
            raise UsageError("the enrollment recording count must be at least 1")
        for name, hz in (("probe", pb), ("enrollment", eb)):
            if not np.all(np.isnan(hz) | (np.isfinite(hz) & (hz > 0))):
                raise UsageError(f"{name} bandwidth must be positive Hz or NaN (unknown)")
        return cls(s, p, e, c, pb, eb)

    def __len__(self) -> int:
        return int(self.score.size)

    def subset(self, index: npt.ArrayLike) -> TrialQuality:
        """The trials selected by ``index`` (a boolean mask or integer positions)."""
        i = np.asarray(index)
        return TrialQuality(*(getattr(self, name)[i] for name in _INPUTS))

    @staticmethod
    def concatenate(parts: Sequence[TrialQuality]) -> TrialQuality:
        return TrialQuality(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in _INPUTS)
        )


@dataclass(frozen=True)
class SideQuality:
    """The quality of one side of a trial: speech seconds (summed over its recordings), how
    many recordings, and the audio bandwidth in Hz (NaN when unknown)."""

    speech_seconds: float
    count: int
    bandwidth_hz: float


def enrollment_quality(
    speech_seconds: npt.ArrayLike, bandwidth_hz: npt.ArrayLike | None = None
) -> SideQuality:
    """The quality of a voiceprint averaged over recordings, from its recordings' measures.

    speech_seconds: (r,) speech seconds of each recording; bandwidth_hz: (r,) their
    bandwidths (None or any NaN: unknown). Returns the total speech, r, and the bandwidth
    averaged with speech seconds as weights (a recording counts as much as it speaks).
    Raises UsageError for no recordings or non-positive durations.
    """
    seconds = np.atleast_1d(np.asarray(speech_seconds, dtype=np.float64))
    if seconds.size == 0 or not np.all(np.isfinite(seconds) & (seconds > 0)):
        raise UsageError("a voiceprint needs recordings with positive speech seconds")
    bandwidth = float("nan")
    if bandwidth_hz is not None:
        hz = np.atleast_1d(np.asarray(bandwidth_hz, dtype=np.float64))
        if hz.shape != seconds.shape:
            raise UsageError(f"{hz.size} bandwidths for {seconds.size} recordings")
        if not np.isnan(hz).any():
            bandwidth = float(np.average(hz, weights=seconds))
    return SideQuality(float(seconds.sum()), int(seconds.size), bandwidth)


def _log_min(q: TrialQuality) -> Array:
    return np.log(np.minimum(q.probe_seconds, q.enroll_seconds))


def _log_max(q: TrialQuality) -> Array:
    return np.log(np.maximum(q.probe_seconds, q.enroll_seconds))


def _bandwidth_min_khz(q: TrialQuality) -> Array:
    if np.isnan(q.probe_bandwidth_hz).any() or np.isnan(q.enroll_bandwidth_hz).any():
        raise UsageError("this calibration needs the audio bandwidth of both sides")
    return np.minimum(q.probe_bandwidth_hz, q.enroll_bandwidth_hz) / 1000.0


FEATURES: dict[str, tuple[str, Callable[[TrialQuality], Array]]] = {
    "score": ("the cosine score", lambda q: q.score),
    "log_speech_min": (
        "ln of the shorter side's speech seconds (probe vs enrollment total)",
        _log_min,
    ),
    "log_speech_max": ("ln of the longer side's speech seconds", _log_max),
    "log_enroll_count": (
        "ln of the number of enrollment recordings (0 for a single file)",
        lambda q: np.log(q.enroll_count),
    ),
    "bandwidth_min_khz": (
        "the narrower side's audio bandwidth in kHz (speakerdb._quality.speech_bandwidth_hz "
        "of the decoded 16 kHz audio)",
        _bandwidth_min_khz,
    ),
    "score_x_log_speech_min": ("score times log_speech_min", lambda q: q.score * _log_min(q)),
    "score_x_bandwidth_min_khz": (
        "score times bandwidth_min_khz",
        lambda q: q.score * _bandwidth_min_khz(q),
    ),
}
"""Every feature a calibration may use: name -> (definition, function of the inputs).

A stored calibration names its features; loading one that names a feature not defined here is
refused, so a definition must never change meaning under the same name."""

DEFAULT_FEATURES = ("score", "log_speech_min", "log_speech_max", "bandwidth_min_khz")
"""The features of the bundled calibrations: the score; the usual quality-measure terms of
speech duration (VoxSRC-style QMF: the log durations of the shorter and the longer side); and
the channel's bandwidth, which tells a phone line from wideband audio. Additive on purpose: a
score x duration term calibrated the left-out sets a little better but made the left-out phone
line's false-accept rate swing from 0 to 2.3 % with the regularisation; this form does not
depend on it. The leave-one-set-out ablation: README, "Accuracy and calibration"."""

DEFAULT_REGULARISATION = 1e-4
"""L2 penalty on the standardised weights (not the bias); the loss it is added to is 1 for an
uninformative calibration. Light: it keeps a fit well-posed when a feature barely varies or the
classes separate, and moves the leave-one-set-out figures by under a percentage point against
1e-6 (1e-3 already shrinks the weights visibly)."""

FAR_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
"""False-accept rates at which a fit records the LLR threshold reaching them on its impostor
trials (:meth:`Calibration.threshold_at_far` interpolates between them)."""


def feature_matrix(features: Sequence[str], inputs: TrialQuality) -> Array:
    """(n, k) float64: column j is feature ``features[j]`` of every trial.

    Raises UsageError for a name not in :data:`FEATURES`.
    """
    columns = []
    for name in features:
        if name not in FEATURES:
            raise UsageError(f"unknown calibration feature {name!r}")
        columns.append(FEATURES[name][1](inputs))
    return np.stack(columns, axis=1) if columns else np.zeros((len(inputs), 0))


@dataclass(frozen=True)
class OperatingPoint:
    """Where decisions are cut: a target prior and the costs of a miss and a false accept.

    ``threshold`` is the Bayes threshold on LLRs, ``ln(c_fa / c_miss) - logit(p_target)``
    (:func:`speakerdb.scoring.bayes_threshold`): accept iff llr >= threshold.
    """

    p_target: float = 0.01
    c_miss: float = 1.0
    c_fa: float = 1.0

    def __post_init__(self) -> None:
        scoring.bayes_threshold(self.p_target, self.c_miss, self.c_fa)  # validates

    @property
    def threshold(self) -> float:
        return scoring.bayes_threshold(self.p_target, self.c_miss, self.c_fa)

    @property
    def effective_prior(self) -> float:
        """The single prior equivalent to (p_target, c_miss, c_fa) with unit costs."""
        return float(1.0 / (1.0 + math.exp(self.threshold)))


DEFAULT_OPERATING_POINT = OperatingPoint(p_target=0.01, c_miss=1.0, c_fa=1.0)
"""The default decision: the NIST SRE convention the repository's minDCF already uses. For
calibrated LLRs its threshold ln 99 = 4.6 bounds the false-accept rate by e^-4.6 = 1 %, since
P(llr >= t | different) <= e^-t for any t."""


@dataclass(frozen=True)
class FitSummary:
    """What a calibration was fitted on. ``groups``: per group (e.g. a data set and trial
    kind), its target and non-target counts; every group weighs the same (see
    :func:`group_weights`)."""

    p_fit: float
    regularisation: float
    target_trials: int
    nontarget_trials: int
    trials_sha256: str | None
    created: str
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration of one model's scores (see the module docstring).

    model: {"name", "weights_sha256", "dimension"} of the model whose scores it maps.
    features / weights / bias: llr = sum(weights * features) + bias. input_ranges: for
    each quality input (``probe_seconds``, ``enroll_seconds``, ``enroll_count``, the two
    bandwidths), the [min, max] seen when fitting; inputs are clipped to them before the
    features are computed, so the calibration never extrapolates its quality terms beyond
    the data it saw. far_thresholds: (far, llr threshold) pairs measured on the fit's
    impostor trials. score: what the ``score`` input is, "cosine" or "asnorm" (the AS-norm
    z-score; see :data:`SCORES`).
    """

    model: dict[str, Any]
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    input_ranges: dict[str, tuple[float, float]]
    far_thresholds: tuple[tuple[float, float], ...]
    fit: FitSummary
    score: str = "cosine"

    # --- applying ------------------------------------------------------------------------------

    def llrs(self, inputs: TrialQuality) -> Array:
        """(n,) float64 LLRs of n trials."""
        x = feature_matrix(self.features, self._clip(inputs))
        # Summed term by term in a fixed order (not a BLAS product, whose order depends on
        # the batch size), so that a trial gets bit-identical LLRs alone or in a batch.
        total = np.full(len(inputs), self.bias, dtype=np.float64)
        for k, weight in enumerate(self.weights):
            total += weight * x[:, k]
        return total

    def llr(
        self,
        score: float,
        probe_seconds: float,
        enroll_seconds: float,
        enroll_count: int = 1,
        probe_bandwidth_hz: float = math.nan,
        enroll_bandwidth_hz: float = math.nan,
    ) -> float:
        """LLR of one trial (see :class:`TrialQuality` for the inputs)."""
        inputs = TrialQuality.of(
            score,
            probe_seconds,
            enroll_seconds,
            enroll_count,
            probe_bandwidth_hz,
            enroll_bandwidth_hz,
        )
        return float(self.llrs(inputs)[0])

    def _clip(self, q: TrialQuality) -> TrialQuality:
        def clip(name: str, values: Array) -> Array:
            lo, hi = self.input_ranges.get(name, (-np.inf, np.inf))
            return np.clip(values, lo, hi)

        return TrialQuality(q.score, *(clip(name, getattr(q, name)) for name in _INPUTS[1:]))

    def threshold_at_far(self, far: float) -> float:
        """The LLR threshold at which the fit's impostor trials were accepted at rate ``far``
        (group-balanced), interpolated linearly in ln(far) between :data:`FAR_GRID` points.

        Raises UsageError outside the recorded range of false-accept rates.
        """
        grid = np.array([f for f, _ in self.far_thresholds])
        values = np.array([t for _, t in self.far_thresholds])
        if not grid.size or not grid.min() <= far <= grid.max():
            span = f"[{grid.min():g}, {grid.max():g}]" if grid.size else "(none recorded)"
            raise UsageError(f"false-accept rate {far} outside the calibrated range {span}")
        order = np.argsort(grid)
        return float(np.interp(np.log(far), np.log(grid[order]), values[order]))

    def matches(self, name: str, weights_sha256: str, dimension: int) -> bool:
        """True iff this calibration was fitted on scores of that model."""
        return (
            self.model.get("name") == name
            and self.model.get("weights_sha256") == weights_sha256
            and self.model.get("dimension") == dimension
        )

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict holding everything needed to apply and audit it."""
        return {
            "format": FORMAT,
            "model": dict(self.model),
            "score": self.score,
            "features": [
                {"name": name, "definition": FEATURES[name][0], "weight": weight}
                for name, weight in zip(self.features, self.weights, strict=True)
            ],
            "bias": self.bias,
            "input_ranges": {k: list(v) for k, v in self.input_ranges.items()},
            "far_thresholds": [list(pair) for pair in self.far_thresholds],
            "fit": {
                "p_fit": self.fit.p_fit,
                "regularisation": self.fit.regularisation,
                "target_trials": self.fit.target_trials,
                "nontarget_trials": self.fit.nontarget_trials,
                "trials_sha256": self.fit.trials_sha256,
                "created": self.fit.created,
                "groups": {k: list(v) for k, v in self.fit.groups.items()},
                "note": self.fit.note,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`. Raises ModelError (one line) for anything malformed:
        another format, unknown features, non-finite numbers, missing keys."""
        try:
            if data.get("format") != FORMAT:
                raise ModelError(f"not a {FORMAT} calibration (format {data.get('format')!r})")
            model = dict(data["model"])
            if not (
                isinstance(model.get("name"), str)
                and isinstance(model.get("weights_sha256"), str)
                and isinstance(model.get("dimension"), int)
            ):
                raise ModelError("calibration: model needs name, weights_sha256 and dimension")
            score = data.get("score", "cosine")
            if score not in SCORES:
                raise ModelError(f"calibration of unknown scores {score!r}")
            names = tuple(str(f["name"]) for f in data["features"])
            unknown = [n for n in names if n not in FEATURES]
            if unknown:
                raise ModelError(f"calibration uses unknown features: {', '.join(unknown)}")
            weights = tuple(_finite(f["weight"]) for f in data["features"])
            ranges = {
                str(k): (_number(v[0]), _number(v[1])) for k, v in data["input_ranges"].items()
            }
            far = tuple((_finite(f), _finite(t)) for f, t in data["far_thresholds"])
            fit = data["fit"]
            summary = FitSummary(
                p_fit=_finite(fit["p_fit"]),
                regularisation=_finite(fit["regularisation"]),
                target_trials=int(fit["target_trials"]),
                nontarget_trials=int(fit["nontarget_trials"]),
                trials_sha256=None if fit["trials_sha256"] is None else str(fit["trials_sha256"]),
                created=str(fit["created"]),
                groups={str(k): (int(v[0]), int(v[1])) for k, v in fit.get("groups", {}).items()},
                note=str(fit.get("note", "")),
            )
            return cls(
                model, names, weights, _finite(data["bias"]), ranges, far, summary, str(score)
            )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ModelError(f"malformed calibration: {type(exc).__name__}: {exc}") from None


def bundled_calibration(name: str, weights_sha256: str, dimension: int) -> Calibration | None:
    """The calibration shipped for a model (``speakerdb/calibrations/<name>.json``), or None
    when there is none for this model or it was fitted on other weights (then the model's
    cosine threshold applies). Raises ModelError when the shipped file is malformed."""
    resource = importlib.resources.files("speakerdb").joinpath("calibrations", f"{name}.json")
    if not resource.is_file():
        return None
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable bundled calibration {name}.json: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"bundled calibration {name}.json is not a JSON object")
    calibration = Calibration.from_dict(data)
    return calibration if calibration.matches(name, weights_sha256, dimension) else None


def _number(value: Any) -> float:
    out = float(value)
    if math.isnan(out):
        raise ValueError("NaN in calibration")
    return out


def _finite(value: Any) -> float:
    out = _number(value)
    if not math.isfinite(out):
        raise ValueError(f"non-finite number {value!r} in calibration")
    return out


# --- fitting -----------------------------------------------------------------------------------


def group_weights(labels: npt.ArrayLike, groups: npt.ArrayLike | None = None) -> Array:
    """(n,) float64 trial weights: targets sum to 1, non-targets sum to 1, and within each
    class every group that has trials of it weighs the same (so a data set with 28 000 trials
    does not drown one with 800). groups: (n,) labels of any hashable kind, or None for one
    group."""
    y = np.asarray(labels).astype(bool)
    g = np.zeros(y.size, dtype=np.int64) if groups is None else _group_codes(groups)
    weights = np.zeros(y.size, dtype=np.float64)
    for cls in (True, False):
        in_class = y == cls
        present = np.unique(g[in_class])
        for code in present:
            members = in_class & (g == code)
            weights[members] = 1.0 / (present.size * members.sum())
    return weights


def _group_codes(groups: npt.ArrayLike) -> npt.NDArray[np.int64]:
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return np.asarray(codes, dtype=np.int64).ravel()


def fit_calibration(
    inputs: TrialQuality,
    labels: npt.ArrayLike,
    *,
    model: Mapping[str, Any],
    features: Sequence[str] = DEFAULT_FEATURES,
    p_fit: float = DEFAULT_OPERATING_POINT.effective_prior,
    groups: npt.ArrayLike | None = None,
    regularisation: float = DEFAULT_REGULARISATION,
    trials_sha256: str | None = None,
    created: str | None = None,
    clip_inputs: bool = True,
    note: str = "",
    score: str = "cosine",
) -> Calibration:
    """Fit ``llr = w . features + b`` by prior-weighted logistic regression.

    Minimises (BOSARIS ``train_llr_fusion``; natural-log units; H(p) the prior's entropy)::

        [p sum_tgt v_i ln(1 + e^-(llr_i + logit p)) + (1-p) sum_non v_j ln(1 + e^(llr_j + logit p))]
        / H(p)  +  regularisation / 2 * |w_standardised|^2

    where v are :func:`group_weights` (each class sums to 1): the fit behaves as if targets
    had prior ``p_fit``, whatever the trial counts, and its outputs are LLRs (the prior's
    log-odds is added inside the loss, not to the result). Convex; solved by Newton's method
    on standardised features.

    inputs: n trials; labels: (n,) 1 same speaker / 0 different. model: the scores' model
    identity ({"name", "weights_sha256", "dimension"}). groups: (n,) condition labels for
    balancing (e.g. "vctk/pairs"). score: what ``inputs.score`` holds (:data:`SCORES`).
    clip_inputs: record the inputs' ranges so that applying clips to them (False records
    none). Raises UsageError without both classes or with mismatched lengths.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    if y.size != len(inputs):
        raise UsageError(f"{y.size} labels for {len(inputs)} trials")
    if not np.all((y == 0) | (y == 1)):
        raise UsageError("labels must be 1 (same speaker) or 0 (different speakers)")
    n_tgt, n_non = int(y.sum()), int(y.size - y.sum())
    if n_tgt == 0 or n_non == 0:
        raise UsageError(
            f"calibration needs target and non-target trials (got {n_tgt} and {n_non})"
        )
    if not 0.0 < p_fit < 1.0:
        raise UsageError(f"p_fit must be in (0, 1), not {p_fit}")
    if regularisation < 0:
        raise UsageError(f"regularisation must be >= 0, not {regularisation}")
    if score not in SCORES:
        raise UsageError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    features = tuple(features)
    ranges: dict[str, tuple[float, float]] = {}
    if clip_inputs:
        for name in _INPUTS[1:]:
            values = getattr(inputs, name)
            if not np.isnan(values).all():
                ranges[name] = (float(np.nanmin(values)), float(np.nanmax(values)))
    x = feature_matrix(features, inputs)
    v = group_weights(y, groups)
    # Per-trial loss weights: the prior times the class-normalised group weight, over the
    # loss of the uninformative llr = 0 (the prior's entropy), so that the loss is about 1 for
    # a useless calibration whatever p_fit, and the regularisation means the same at any prior.
    entropy = -(p_fit * math.log(p_fit) + (1.0 - p_fit) * math.log(1.0 - p_fit))
    c = np.where(y == 1, p_fit, 1.0 - p_fit) * v / entropy
    offset = math.log(p_fit / (1.0 - p_fit))
    mean, scale = standardisation(x, v)
    w_std, b_std = newton_logistic((x - mean) / scale, y, c, offset, regularisation)
    weights = w_std / scale
    bias = float(b_std - np.sum(w_std * mean / scale))
    provisional = Calibration(
        model=dict(model),
        features=features,
        weights=tuple(float(w) for w in weights),
        bias=bias,
        input_ranges=ranges,
        far_thresholds=(),
        fit=FitSummary(p_fit, regularisation, n_tgt, n_non, trials_sha256, "", {}),
    )
    llr = provisional.llrs(inputs)
    non = y == 0
    far_thresholds = tuple(
        (far, _weighted_threshold_at_far(llr[non], v[non], far)) for far in FAR_GRID
    )
    group_counts: dict[str, tuple[int, int]] = {}
    if groups is not None:
        g = np.asarray(groups).astype(str)
        for name in sorted(set(g.tolist())):
            members = g == name
            group_counts[name] = (int(y[members].sum()), int((1 - y[members]).sum()))
    stamp = created or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return Calibration(
        model=dict(model),
        features=features,
        weights=provisional.weights,
        bias=bias,
        input_ranges=ranges,
        far_thresholds=far_thresholds,
        fit=FitSummary(
            p_fit, regularisation, n_tgt, n_non, trials_sha256, stamp, group_counts, note
        ),
        score=score,
    )


def standardisation(x: Array, v: Array) -> tuple[Array, Array]:
    """Weighted mean and standard deviation of each column (1 where a column is constant, so
    that its standardised values are all 0 and its weight stays 0)."""
    share = v / v.sum()
    mean = share @ x
    sd = np.sqrt(share @ (x - mean) ** 2)
    return mean, np.where(sd > 1e-12, sd, 1.0)


def newton_logistic(
    x: Array, y: Array, c: Array, offset: float, regularisation: float
) -> tuple[Array, float]:
    """Minimise sum_i c_i softplus(-(2 y_i - 1)(x_i . w + b + offset)) + reg / 2 |w|^2.

    Newton steps with backtracking; the loss is convex, so this converges to the optimum.
    Returns (w, b).
    """
    n, k = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    sign = 2.0 * y - 1.0
    penalty = np.full(k + 1, regularisation)
    penalty[-1] = 0.0  # the bias is not penalised

    def loss(theta: Array) -> float:
        z = a @ theta + offset
        return float(c @ np.logaddexp(0.0, -sign * z) + 0.5 * penalty @ theta**2)

    theta = np.zeros(k + 1)
    current = loss(theta)
    for _ in range(100):
        z = a @ theta + offset
        prob = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
        gradient = a.T @ (c * (prob - y)) + penalty * theta
        hessian = (a * (c * prob * (1.0 - prob))[:, None]).T @ a + np.diag(penalty)
        hessian += 1e-12 * np.eye(k + 1)  # separable data: keep the system solvable
        step = np.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)
        if decrement < 1e-14:
            break
        size = 1.0
        while size > 1e-10:
            candidate = theta - size * step
            value = loss(candidate)
            if value <= current - 0.25 * size * decrement:
                break
            size *= 0.5
        else:
            break
        theta, current = candidate, value
    return theta[:k], float(theta[k])


def _weighted_threshold_at_far(llr: Array, weight: Array, far: float) -> float:
    """The lowest LLR threshold whose weighted share of ``llr`` at or above it is <= far."""
    order = np.argsort(llr)[::-1]
    ranked = llr[order]
    share = np.cumsum(weight[order]) / weight.sum()
    # Accepting down to ranked[i] accepts share[i]; the first index whose share exceeds far
    # must be rejected: the threshold sits just above it.
    over = np.nonzero(share > far + 1e-12)[0]
    if over.size == 0:
        return float(ranked[-1])
    return float(np.nextafter(ranked[over[0]], np.inf))
