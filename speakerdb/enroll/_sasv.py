"""Spoofing-aware speaker verification (SASV) evaluation: ``speakerdb eval --sasv TRIALS``.

Trials are ``<target|nontarget|spoof> <claimed speaker> <probe path>`` lines (paths relative
to the trials file). Every probe is verified against its claimed speaker with the database's
rule and its countermeasure, as ``verify`` does. One SASV score per trial makes the rule in
use a threshold at 0: ``min(speaker score - speaker threshold, spoof LLR - spoof threshold)``
(accept iff both checks pass; a probe the countermeasure does not judge, under 2 s, has only
the speaker margin).

Measures: SASV-EER (target vs nontarget and spoof, on that score), spoof-EER (target vs
spoof, on the spoof LLR), speaker EER (target vs nontarget, on the speaker score), a-DCF
(ASVspoof 5: Shim et al., "an architecture-agnostic detection cost function for SASV",
Odyssey 2024) at the decision in use and its minimum over thresholds, and the error rate of
each trial kind at the decision in use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb.errors import UsageError
from speakerdb.scoring import eer

__all__ = ["ADCF_COSTS", "SasvReport", "SasvTrial", "a_dcf", "read_sasv_trials", "sasv_metrics"]

KINDS = ("target", "nontarget", "spoof")

ADCF_COSTS = {"c_miss": 1.0, "c_fa_non": 10.0, "c_fa_spf": 10.0}
ADCF_PRIORS = {"target": 0.9, "nontarget": 0.05, "spoof": 0.05}
"""ASVspoof 5's a-DCF parameters (evaluation plan, track 2)."""


@dataclass(frozen=True)
class SasvTrial:
    kind: str
    speaker: str
    path: Path


def read_sasv_trials(path: Path) -> list[SasvTrial]:
    """The trials of an SASV list; raises UsageError on a malformed line or an empty list."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read SASV trials {path}: {exc.strerror or exc}") from None
    trials = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in KINDS:
            raise UsageError(
                f"{path}:{number}: expected '<target|nontarget|spoof> <speaker> <path>'"
            )
        trials.append(SasvTrial(parts[0], parts[1], (path.parent / parts[2]).resolve()))
    if not trials:
        raise UsageError(f"{path}: no SASV trials")
    return trials


def a_dcf(
    target: npt.ArrayLike, nontarget: npt.ArrayLike, spoof: npt.ArrayLike, threshold: float
) -> float:
    """Normalised a-DCF at ``threshold`` (accept iff score >= threshold): the ASVspoof 5
    costs and priors (:data:`ADCF_COSTS`), divided by the cost of the better of accepting or
    rejecting everything. A kind with no trials contributes nothing."""

    def rate(scores: npt.ArrayLike, accepted: bool) -> float:
        s = np.asarray(scores, dtype=np.float64)
        if s.size == 0:
            return 0.0
        return float(np.mean(s >= threshold if accepted else s < threshold))

    c, p = ADCF_COSTS, ADCF_PRIORS
    cost = (
        c["c_miss"] * p["target"] * rate(target, False)
        + c["c_fa_non"] * p["nontarget"] * rate(nontarget, True)
        + c["c_fa_spf"] * p["spoof"] * rate(spoof, True)
    )
    default = min(
        c["c_miss"] * p["target"], c["c_fa_non"] * p["nontarget"] + c["c_fa_spf"] * p["spoof"]
    )
    return cost / default


@dataclass
class SasvReport:
    """The figures of :func:`sasv_metrics` (rates as fractions)."""

    trials: dict[str, int]
    sasv_eer: float | None
    spoof_eer: float | None
    speaker_eer: float | None
    a_dcf: float
    min_a_dcf: float
    error_rates: dict[str, float | None] = field(default_factory=dict)
    unscored: int = 0
    # Per scored trial, for the plot (not in the JSON): its kind and its margins above the
    # speaker and the spoof thresholds (+inf: not judged by the countermeasure).
    kinds: list[str] = field(default_factory=list, repr=False)
    speaker_margin: list[float] = field(default_factory=list, repr=False)
    spoof_margin: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("kinds", "speaker_margin", "spoof_margin"):
            del out[key]
        return out


def sasv_metrics(
    kinds: list[str], speaker_margin: npt.ArrayLike, spoof_margin: npt.ArrayLike
) -> SasvReport:
    """SASV figures from each trial's kind and its margins above the speaker threshold and
    the spoof threshold (a spoof margin of +inf: not judged by the countermeasure). Error
    rates at the decision in use: target FRR, nontarget FAR, spoof FAR."""
    spk = np.asarray(speaker_margin, dtype=np.float64)
    spf = np.asarray(spoof_margin, dtype=np.float64)
    sasv = np.minimum(spk, spf)
    kind = np.asarray(kinds)
    by = {k: kind == k for k in KINDS}

    def ok(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
        return a.size > 0 and b.size > 0

    tgt, non, spo = (sasv[by[k]] for k in KINDS)
    sasv_eer = eer(tgt, np.concatenate([non, spo]))[0] if ok(tgt, np.r_[non, spo]) else None
    judged = np.isfinite(spf)
    spf_t, spf_s = spf[by["target"] & judged], spf[by["spoof"] & judged]
    spoof_eer = eer(spf_t, spf_s)[0] if ok(spf_t, spf_s) else None
    spk_t, spk_n = spk[by["target"]], spk[by["nontarget"]]
    speaker_eer = eer(spk_t, spk_n)[0] if ok(spk_t, spk_n) else None
    candidates = np.unique(np.r_[sasv[np.isfinite(sasv)], math.inf])
    min_cost = min(a_dcf(tgt, non, spo, float(t)) for t in candidates)

    def rate(scores: npt.NDArray[np.float64], accepted: bool) -> float | None:
        if scores.size == 0:
            return None
        return float(np.mean(scores >= 0 if accepted else scores < 0))

    return SasvReport(
        trials={k: int(by[k].sum()) for k in KINDS},
        sasv_eer=sasv_eer,
        spoof_eer=spoof_eer,
        speaker_eer=speaker_eer,
        a_dcf=a_dcf(tgt, non, spo, 0.0),
        min_a_dcf=min_cost,
        error_rates={
            "target_frr": rate(tgt, False),
            "nontarget_far": rate(non, True),
            "spoof_far": rate(spo, True),
        },
        kinds=[str(k) for k in kind.tolist()],
        speaker_margin=spk.tolist(),
        spoof_margin=spf.tolist(),
    )
