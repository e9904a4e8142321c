"""Spoof calibration: from a countermeasure's raw output and the recording's bandwidth to a
bona fide-vs-spoof log-likelihood ratio, and the threshold below which a probe is an attack.

The raw output (AASIST's bona fide minus spoof logit) moves with the channel as speaker scores
do: 8 kHz phone recordings of real people score far lower than wideband ones. The calibration
is

    llr = w . features + b        (natural log, ln p(x | bona fide) / p(x | spoof))

with the features of :data:`SPOOF_FEATURES` (the raw log-odds, and whether the recording is
narrowband), fitted in two steps (:func:`fit_spoof_calibration`): the narrowband shift from
bona fide speech alone, then prior-weighted logistic regression with every condition weighted
alike (:func:`speakerdb._calibration.group_weights`). A probe is detected as spoofed iff
``llr < threshold``; the threshold is chosen on the fitting data as the highest value at
which no bona fide condition has more than ``max_flag_rate`` of its recordings flagged.
:func:`adapt_spoof_calibration` moves a fitted calibration to a user's channel from that
channel's bona fide speech alone (no attacks needed).

Pure numpy; no torch, no SQL.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb._calibration import group_weights, newton_logistic, standardisation
from speakerdb.errors import ModelError, UsageError

__all__ = [
    "DEFAULT_MAX_FLAG_RATE",
    "NARROWBAND_HZ",
    "SPOOF_FEATURES",
    "SPOOF_FORMAT",
    "TOLERANCE_CONFIDENCE",
    "SpoofCalibration",
    "adapt_spoof_calibration",
    "bundled_spoof_calibration",
    "fit_spoof_calibration",
    "spoof_features",
]

SPOOF_FORMAT = "speakerdb-spoof-calibration/1"
SPOOF_FEATURES = ("raw", "narrowband")
NARROWBAND_HZ = 4500.0
"""Recordings whose bandwidth is below this are narrowband (phone lines: 2.5-3.4 kHz;
wideband development speech: 5.2-8 kHz)."""
DEFAULT_MAX_FLAG_RATE = 0.05
"""Operating point: at most this share of any bona fide condition flagged (a bona fide
target must be accepted at >= 0.95 x the rate without the countermeasure)."""
TOLERANCE_CONFIDENCE = 0.95
"""Confidence of the bound :func:`adapt_spoof_calibration` puts at the threshold: the usual
level of a one-sided tolerance bound, not fitted (docs/spoofing.md)."""
_REGULARISATION = 1e-6  # near-separable data: a larger penalty would flatten the LLRs
_BUNDLED = "spoof-aasist.json"

Array = npt.NDArray[np.float64]


def spoof_features(raw: npt.ArrayLike, bandwidth_hz: npt.ArrayLike) -> Array:
    """(n,) raw log-odds and (n,) bandwidths (Hz) -> (n, 2) float64 feature matrix
    (:data:`SPOOF_FEATURES`: the raw log-odds, 1.0 where the bandwidth is below
    :data:`NARROWBAND_HZ`). Raises UsageError on mismatched lengths or non-finite input."""
    r = np.asarray(raw, dtype=np.float64).ravel()
    b = np.asarray(bandwidth_hz, dtype=np.float64).ravel()
    if r.shape != b.shape:
        raise UsageError(f"{r.size} raw scores for {b.size} bandwidths")
    if not (np.isfinite(r).all() and np.isfinite(b).all()):
        raise UsageError("spoof calibration inputs must be finite")
    narrow = (b < NARROWBAND_HZ).astype(np.float64)
    return np.stack([r, narrow], axis=1)


@dataclass(frozen=True)
class SpoofCalibration:
    """A fitted spoof calibration for one countermeasure (``countermeasure``: family, variant,
    weights_sha256). ``threshold``: LLR below which a probe is detected as an attack."""

    countermeasure: Mapping[str, str]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    features: tuple[str, ...] = SPOOF_FEATURES
    fit: Mapping[str, Any] = field(default_factory=dict)

    def llrs(self, raw: npt.ArrayLike, bandwidth_hz: npt.ArrayLike) -> Array:
        """(n,) float64 bona fide-vs-spoof LLRs (natural log)."""
        out: Array = spoof_features(raw, bandwidth_hz) @ np.asarray(self.weights) + self.bias
        return out

    def llr(self, raw: float, bandwidth_hz: float) -> float:
        return float(self.llrs([raw], [bandwidth_hz])[0])

    def detected(self, llr: float) -> bool:
        """True iff ``llr`` is below the threshold: the probe is taken for an attack."""
        return llr < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPOOF_FORMAT,
            "countermeasure": dict(self.countermeasure),
            "features": list(self.features),
            "weights": list(self.weights),
            "bias": self.bias,
            "threshold": self.threshold,
            "narrowband_hz": NARROWBAND_HZ,
            "fit": dict(self.fit),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpoofCalibration:
        """Raises ModelError for another format, features or non-finite numbers."""
        try:
            if data.get("format") != SPOOF_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {SPOOF_FORMAT!r}")
            features = tuple(str(f) for f in data["features"])
            if features != SPOOF_FEATURES or data.get("narrowband_hz") != NARROWBAND_HZ:
                raise ValueError(f"features {features} are not {SPOOF_FEATURES}")
            weights = tuple(_finite(w) for w in data["weights"])
            if len(weights) != len(features):
                raise ValueError("one weight per feature expected")
            return cls(
                countermeasure={str(k): str(v) for k, v in dict(data["countermeasure"]).items()},
                weights=weights,
                bias=_finite(data["bias"]),
                threshold=_finite(data["threshold"]),
                features=features,
                fit=dict(data.get("fit") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"not a spoof calibration ({exc})") from None


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"non-finite number {value!r}")
    return out


def fit_spoof_calibration(
    raw: npt.ArrayLike,
    bandwidth_hz: npt.ArrayLike,
    bonafide: npt.ArrayLike,
    groups: Sequence[str],
    *,
    countermeasure: Mapping[str, str],
    p_fit: float = 0.5,
    max_flag_rate: float = DEFAULT_MAX_FLAG_RATE,
    note: str = "",
) -> SpoofCalibration:
    """Fit the LLR map and the threshold on labelled recordings.

    raw, bandwidth_hz: (n,) countermeasure log-odds and bandwidths; bonafide: (n,) 1 bona fide,
    0 attack; groups: (n,) condition names (bona fide corpus or attack kind), each weighted
    alike within its class.

    Two steps, so that what moves with the channel is learned from bona fide speech only:
    (1) the channel shift: how much lower narrowband bona fide recordings score than wideband
    ones (difference of group-balanced means; 0 without bona fide recordings of both kinds);
    (2) ``llr = a (raw - shift * narrowband) + b`` by BOSARIS' prior-weighted logistic
    regression at ``p_fit`` (see :func:`speakerdb._calibration.fit_calibration`). Were the
    band a free feature, attacks that happen to be narrowband (phone-line copies) would teach
    it that narrowband means spoof, and real phone calls would be flagged.

    Threshold: the largest LLR t such that, in every bona fide group, the share with
    llr < t is at most ``max_flag_rate``. Raises UsageError without both classes, with
    mismatched lengths or a bad rate.
    """
    x = spoof_features(raw, bandwidth_hz)
    y = np.asarray(bonafide, dtype=np.float64).ravel()
    g = np.asarray(groups).astype(str)
    if y.size != x.shape[0] or g.size != y.size:
        raise UsageError(f"{y.size} labels and {g.size} groups for {x.shape[0]} recordings")
    if not np.all((y == 0) | (y == 1)):
        raise UsageError("labels must be 1 (bona fide) or 0 (spoof)")
    if y.sum() == 0 or y.sum() == y.size:
        raise UsageError("a spoof calibration needs bona fide and spoofed recordings")
    if not 0.0 < max_flag_rate < 1.0 or not 0.0 < p_fit < 1.0:
        raise UsageError("max_flag_rate and p_fit must be in (0, 1)")
    v = group_weights(y, g)
    bona, narrow = y == 1, x[:, 1] == 1.0
    shift = 0.0
    if (bona & narrow).any() and (bona & ~narrow).any():
        shift = _balanced_mean(x[bona & narrow, 0], g[bona & narrow]) - _balanced_mean(
            x[bona & ~narrow, 0], g[bona & ~narrow]
        )
    compensated = (x[:, 0] - shift * x[:, 1])[:, None]
    entropy = -(p_fit * math.log(p_fit) + (1.0 - p_fit) * math.log(1.0 - p_fit))
    c = np.where(bona, p_fit, 1.0 - p_fit) * v / entropy
    mean, scale = standardisation(compensated, v)
    w_std, b_std = newton_logistic(
        (compensated - mean) / scale, y, c, math.log(p_fit / (1.0 - p_fit)), _REGULARISATION
    )
    slope = float(w_std[0] / scale[0])
    bias = float(b_std - w_std[0] * mean[0] / scale[0])
    weights = (slope, -slope * shift)
    llr = x @ np.asarray(weights) + bias
    threshold = min(
        _highest_threshold(llr[bona & (g == name)], max_flag_rate)
        for name in sorted(set(g[bona].tolist()))
    )
    counts = {name: int((g == name).sum()) for name in sorted(set(g.tolist()))}
    return SpoofCalibration(
        countermeasure=dict(countermeasure),
        weights=weights,
        bias=bias,
        threshold=float(threshold),
        fit={
            "p_fit": p_fit,
            "max_flag_rate": max_flag_rate,
            "narrowband_shift": shift,
            "groups": counts,
            "note": note,
        },
    )


def adapt_spoof_calibration(
    base: SpoofCalibration,
    raw: npt.ArrayLike,
    bandwidth_hz: npt.ArrayLike,
    speakers: Sequence[str | None] | None = None,
    *,
    max_flag_rate: float = DEFAULT_MAX_FLAG_RATE,
    min_per_band: int = 20,
    note: str = "",
) -> SpoofCalibration:
    """``base`` moved to a channel known only from its bona fide recordings.

    raw, bandwidth_hz: (n,) countermeasure log-odds and bandwidths (Hz) of bona fide speech
    of the user's channel; speakers: (n,) who speaks in each (None: unknown, counted as a
    speaker of its own). What an attack looks like (the slope of the LLR map) stays the
    base's: it cannot be learned without attacks. What moves with the channel is an offset
    per band (narrowband / wideband) with at least ``min_per_band`` recordings: the bias for
    wideband speech, the narrowband weight for narrowband (each band moved by its own offset
    only; a band without enough recordings keeps the base's mapping).

    The offset puts a bound on the band's ``max_flag_rate`` quantile of bona fide LLRs at the
    base's threshold. The bound is for speakers the list does not hold: a one-sided normal
    tolerance bound (confidence :data:`TOLERANCE_CONFIDENCE`) over the speakers, whose spread
    is the within-speaker variance plus the variance of the speakers' means (the
    countermeasure scores some voices lower than others: the list's own empirical quantile
    flags far more than the allowed share of other speakers' speech). Only a band of which the
    base flags more than ``max_flag_rate`` of the list is moved, and only ever toward
    passing more: speech the base already passes keeps the base's rule (a rule fitted on a
    few speakers, in either direction, flagged other speakers' speech too often or let more
    attacks through for nothing). Both choices and their held-out figures: docs/spoofing.md,
    "Bona fide speech alone".

    Raises UsageError when no band has ``min_per_band`` recordings, on a bad rate, or on
    mismatched / non-finite input.
    """
    if not 0.0 < max_flag_rate < 1.0:
        raise UsageError("max_flag_rate must be in (0, 1)")
    x = spoof_features(raw, bandwidth_hz)
    who = [None] * x.shape[0] if speakers is None else list(speakers)
    if len(who) != x.shape[0]:
        raise UsageError(f"{len(who)} speakers for {x.shape[0]} recordings")
    labels = np.array([f"#{i}" if s is None else f"={s}" for i, s in enumerate(who)])
    slope = base.weights[0]
    if slope <= 0.0:
        raise UsageError("the base calibration's slope is not positive: it cannot be adapted")
    llr = x @ np.asarray(base.weights) + base.bias
    narrow = x[:, 1] == 1.0
    offsets: dict[str, float] = {}
    counts = {"narrowband": int(narrow.sum()), "wideband": int((~narrow).sum())}
    normal = statistics.NormalDist()
    z = -normal.inv_cdf(max_flag_rate)
    flagged: dict[str, float] = {}
    for band, members in (("wideband", ~narrow), ("narrowband", narrow)):
        if members.sum() >= min_per_band:
            flagged[band] = float(np.mean(llr[members] < base.threshold))
            mean, spread, speakers_in = _speaker_spread(llr[members], labels[members])
            # The one-sided normal tolerance factor (Natrella's approximation): the quantile
            # bound holds with TOLERANCE_CONFIDENCE over the speakers the list samples.
            zc = normal.inv_cdf(TOLERANCE_CONFIDENCE)
            k = z + zc * math.sqrt(1.0 / speakers_in + z * z / (2.0 * speakers_in))
            # A band the base already passes keeps the base's rule.
            moved = flagged[band] > max_flag_rate
            offsets[band] = max(0.0, base.threshold - (mean - k * spread)) if moved else 0.0
    if not offsets:
        raise UsageError(
            f"too few bona fide recordings to adapt the spoof calibration: "
            f"{counts['narrowband']} narrowband and {counts['wideband']} wideband "
            f"(need {min_per_band} of one band)"
        )
    bias = base.bias + offsets.get("wideband", 0.0)
    # narrowband LLR = slope raw + narrow_weight + bias: moved by its own offset only (the
    # bias moved for wideband speech is taken back out of it).
    narrow_weight = base.weights[1] + offsets.get("narrowband", 0.0) - (bias - base.bias)
    return SpoofCalibration(
        countermeasure=dict(base.countermeasure),
        weights=(slope, narrow_weight),
        bias=float(bias),
        threshold=base.threshold,
        fit={
            "mode": "bona fide only",
            "base": dict(base.fit),
            "max_flag_rate": max_flag_rate,
            "narrowband_shift": float(-narrow_weight / slope),
            "offsets": offsets,
            "flagged_before": flagged,
            "groups": {f"bonafide-{band}": count for band, count in counts.items() if count},
            "note": note,
        },
    )


def _speaker_spread(values: Array, speakers: npt.NDArray[np.str_]) -> tuple[float, float, int]:
    """(mean of the speakers' means, sqrt(mean within-speaker variance + variance of the
    speakers' means), number of speakers): the spread of one recording of a speaker not in
    ``values``. Speakers with one recording add to the second term only."""
    names = sorted(set(speakers.tolist()))
    means = np.array([values[speakers == n].mean() for n in names])
    within = [values[speakers == n].var(ddof=1) for n in names if (speakers == n).sum() > 1]
    between = float(means.var(ddof=1)) if means.size > 1 else 0.0
    spread = math.sqrt((float(np.mean(within)) if within else 0.0) + between)
    return float(means.mean()), spread, len(names)


def _balanced_mean(values: Array, groups: npt.NDArray[np.str_]) -> float:
    """Mean of the groups' means (every group counts alike)."""
    return float(np.mean([values[groups == name].mean() for name in sorted(set(groups.tolist()))]))


def _highest_threshold(llr: Array, rate: float) -> float:
    """The largest t with mean(llr < t) <= rate: the (floor(rate n) + 1)-th smallest value."""
    ordered = np.sort(llr)
    allowed = math.floor(rate * ordered.size + 1e-9)
    return float(ordered[allowed]) if allowed < ordered.size else math.inf


def bundled_spoof_calibration(weights_sha256: str) -> SpoofCalibration | None:
    """The calibration shipped for the countermeasure with these weights, or None."""
    text = (
        importlib.resources.files("speakerdb.calibrations").joinpath(_BUNDLED).read_text("utf-8")
        if importlib.resources.files("speakerdb.calibrations").joinpath(_BUNDLED).is_file()
        else None
    )
    if text is None:
        return None
    for entry in json.loads(text):
        calibration = SpoofCalibration.from_dict(entry)
        if calibration.countermeasure.get("weights_sha256") == weights_sha256:
            return calibration
    return None
