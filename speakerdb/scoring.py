"""The one scoring rule of speakerdb, and the error rates that describe it.

Every decision in speakerdb -- file against file, file against an enrolled speaker, and
open-set identification -- goes through :func:`cosine_scores` and :func:`accept`::

    score = cosine(a, b)          # on L2-normalised vectors, in [-1, 1]
    accepted = score >= threshold

Scores are computed in float64 from the float32 vectors so that the same pair always gets
the same score whichever path (verify, compare, identify) produced it.

The evaluation helpers (:func:`error_rates`, :func:`eer`, :func:`min_dcf`,
:func:`threshold_at_far`) take the scores of target trials (same speaker) and non-target
trials (different speakers) as 1-D arrays. Rates are fractions in [0, 1], never percentages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from speakerdb.errors import UsageError

__all__ = [
    "DEFAULT_COHORT_TOP_N",
    "ErrorRates",
    "accept",
    "as_norm",
    "cosine",
    "cosine_scores",
    "eer",
    "error_rates",
    "min_dcf",
    "threshold_at_far",
    "validate_threshold",
]

FloatArray = npt.NDArray[np.floating]


def cosine_scores(probes: npt.ArrayLike, references: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Cosine similarity of every probe with every reference.

    probes: (M, D) or (D,); references: (N, D) or (D,). Returns (M, N) float64 in [-1, 1]
    (squeezed to match: (D,) x (D,) gives a 0-d array). The vectors need not be normalised.
    """
    p = np.asarray(probes, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    if p.shape[-1] != r.shape[-1]:
        raise UsageError(f"vector dimensions differ: {p.shape[-1]} and {r.shape[-1]}")
    p = p / _norms(p)
    r = r / _norms(r)
    # einsum without BLAS sums each dot product in the same order whatever the matrix sizes,
    # so a pair scores bit-identically alone or inside a batch.
    scores = np.einsum("...j,kj->...k", p, np.atleast_2d(r))
    if r.ndim == 1:
        scores = scores[..., 0]
    return np.asarray(np.clip(scores, -1.0, 1.0), dtype=np.float64)


def _norms(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise UsageError("cannot score a zero or non-finite vector")
    return np.asarray(norms, dtype=np.float64)


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cosine similarity of two 1-D vectors of equal dimension, as a Python float."""
    return float(cosine_scores(np.ravel(a), np.ravel(b)))


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, or raise :class:`UsageError` if it is not a finite
    number in [-1, 1] (the range of a cosine)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise UsageError(f"threshold must be a number, not {threshold!r}") from None
    if not np.isfinite(value) or not -1.0 <= value <= 1.0:
        raise UsageError(f"threshold must be a cosine score in [-1, 1], not {threshold!r}")
    return value


def accept(score: float, threshold: float) -> bool:
    """The decision rule: same speaker iff ``score >= threshold``."""
    return bool(score >= threshold)


# --- error rates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorRates:
    """False-accept and false-reject rates at every distinct threshold.

    ``thresholds`` is ascending and ends with +inf; ``far[i]`` is the fraction of non-target
    scores >= thresholds[i], ``frr[i]`` the fraction of target scores < thresholds[i].
    """

    thresholds: npt.NDArray[np.float64]
    far: npt.NDArray[np.float64]
    frr: npt.NDArray[np.float64]


def _split(
    target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    tgt = np.sort(np.asarray(target_scores, dtype=np.float64).ravel())
    non = np.sort(np.asarray(nontarget_scores, dtype=np.float64).ravel())
    if tgt.size == 0 or non.size == 0:
        raise UsageError(
            f"need both target and non-target trials (got {tgt.size} target, {non.size} non-target)"
        )
    if not (np.all(np.isfinite(tgt)) and np.all(np.isfinite(non))):
        raise UsageError("scores must be finite")
    return tgt, non


def error_rates(target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike) -> ErrorRates:
    """FAR and FRR of the rule ``score >= t`` at every distinct score t (and at +inf)."""
    tgt, non = _split(target_scores, nontarget_scores)
    thresholds = np.append(np.unique(np.concatenate([tgt, non])), np.inf)
    frr = np.searchsorted(tgt, thresholds, side="left") / tgt.size
    far = 1.0 - np.searchsorted(non, thresholds, side="left") / non.size
    return ErrorRates(thresholds=thresholds, far=far, frr=frr)


def eer(target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs.

    Returns ``(eer, threshold)``. Among the thresholds at every distinct score, the one where
    FAR and FRR are closest is taken and the EER is the mean of the two there (the
    convention of the GE2E reference figures and of most speaker-verification toolkits).
    When the classes are perfectly separated the EER is 0 and the threshold is the midpoint
    of the gap.
    """
    tgt, non = _split(target_scores, nontarget_scores)
    if non[-1] < tgt[0]:
        return 0.0, float((non[-1] + tgt[0]) / 2.0)
    rates = error_rates(tgt, non)
    i = int(np.argmin(np.abs(rates.far - rates.frr)))
    return float((rates.far[i] + rates.frr[i]) / 2.0), float(rates.thresholds[i])


def min_dcf(
    target_scores: npt.ArrayLike,
    nontarget_scores: npt.ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """Minimum normalised detection cost (NIST SRE definition) and the threshold reaching it.

    DCF(t) = c_miss * p_target * FRR(t) + c_fa * (1 - p_target) * FAR(t), divided by the cost
    of the best trivial system, min(c_miss * p_target, c_fa * (1 - p_target)). Returns
    ``(min_dcf, threshold)``.
    """
    if not 0.0 < p_target < 1.0:
        raise UsageError(f"p_target must be in (0, 1), not {p_target}")
    rates = error_rates(target_scores, nontarget_scores)
    # Prepend t = -inf: everything accepted (FRR 0, FAR 1).
    thresholds = np.concatenate([[-np.inf], rates.thresholds])
    frr = np.concatenate([[0.0], rates.frr])
    far = np.concatenate([[1.0], rates.far])
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    cost /= min(c_miss * p_target, c_fa * (1.0 - p_target))
    i = int(np.argmin(cost))
    return float(cost[i]), float(thresholds[i])


def threshold_at_far(nontarget_scores: npt.ArrayLike, far: float = 0.01) -> float:
    """The lowest threshold whose false-accept rate on ``nontarget_scores`` is <= ``far``.

    Exactly ``floor(far * n)`` non-target scores (ties counted together, so possibly fewer)
    are >= the returned threshold.
    """
    if not 0.0 <= far < 1.0:
        raise UsageError(f"false-accept rate must be in [0, 1), not {far}")
    non = np.sort(np.asarray(nontarget_scores, dtype=np.float64).ravel())[::-1]
    if non.size == 0:
        raise UsageError("need non-target trials to set a threshold by false-accept rate")
    allowed = int(np.floor(far * non.size + 1e-9))
    if allowed >= non.size:
        return float(non[-1])
    # Just above the first non-target score that must be rejected.
    return float(np.nextafter(non[allowed], np.inf))


# --- score normalisation -----------------------------------------------------------------------

DEFAULT_COHORT_TOP_N = 100
MIN_COHORT = 10


def as_norm(
    scores: npt.ArrayLike,
    enroll_cohort: npt.ArrayLike,
    test_cohort: npt.ArrayLike,
    top_n: int = DEFAULT_COHORT_TOP_N,
) -> npt.NDArray[np.float64]:
    """Adaptive symmetric score normalisation (AS-norm; Matejka et al., Interspeech 2017).

    scores: (n,) raw cosine scores of n trials. enroll_cohort / test_cohort: (n, C) cosine
    scores of each trial's enrollment side / test side against C impostor cohort vectors.
    Each side is normalised by the mean and standard deviation of its ``top_n`` highest cohort
    scores (the impostors that resemble it most), and the two z-scores are averaged:

        0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)

    Returns (n,) float64. Normalised scores are no longer cosines: they need thresholds of
    their own (``speakerdb calibrate --norm asnorm``).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    e = np.asarray(enroll_cohort, dtype=np.float64).reshape(len(s), -1)
    t = np.asarray(test_cohort, dtype=np.float64).reshape(len(s), -1)
    if e.shape[1] < MIN_COHORT or t.shape[1] < MIN_COHORT:
        raise UsageError(
            f"score normalisation needs a cohort of at least {MIN_COHORT} impostor voiceprints "
            f"(got {min(e.shape[1], t.shape[1])})"
        )
    if top_n < 2:
        raise UsageError(f"the cohort top-N must be at least 2, not {top_n}")
    mu_e, sd_e = _top_stats(e, top_n)
    mu_t, sd_t = _top_stats(t, top_n)
    return 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)


def _top_stats(
    cohort_scores: npt.NDArray[np.float64], top_n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    n = min(top_n, cohort_scores.shape[1])
    top = -np.partition(-cohort_scores, n - 1, axis=1)[:, :n]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)
