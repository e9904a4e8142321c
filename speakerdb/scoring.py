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

Calibrated scores are log-likelihood ratios, ``llr = ln p(score | same) / p(score | different)``
(natural log). Their measures: :func:`bayes_threshold` (where an LLR should be cut for a given
prior and costs), :func:`act_dcf` (the cost of the decisions actually made), :func:`cllr` (the
log-loss of the LLRs, in bits) and :func:`min_cllr` (the same after the best monotonic
recalibration, :func:`pav_llrs`): ``cllr - min_cllr`` is what miscalibration costs.
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
    "act_dcf",
    "as_norm",
    "bayes_threshold",
    "cllr",
    "cosine",
    "cosine_scores",
    "detection_cost",
    "eer",
    "error_rates",
    "min_cllr",
    "min_dcf",
    "pav_llrs",
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
    norms = np.asarray(np.linalg.norm(a, axis=-1, keepdims=True), dtype=np.float64)
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
    target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike, allow_infinite: bool = False
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    tgt = np.sort(np.asarray(target_scores, dtype=np.float64).ravel())
    non = np.sort(np.asarray(nontarget_scores, dtype=np.float64).ravel())
    if tgt.size == 0 or non.size == 0:
        raise UsageError(
            f"need both target and non-target trials (got {tgt.size} target, {non.size} non-target)"
        )
    if allow_infinite:
        if np.isnan(tgt).any() or np.isnan(non).any():
            raise UsageError("scores must not be NaN")
    elif not (np.all(np.isfinite(tgt)) and np.all(np.isfinite(non))):
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


# --- calibrated scores (log-likelihood ratios) -------------------------------------------------


def _check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise UsageError(f"p_target must be in (0, 1), not {p_target}")
    if not (c_miss > 0.0 and c_fa > 0.0 and np.isfinite(c_miss) and np.isfinite(c_fa)):
        raise UsageError(f"costs must be positive and finite, not c_miss={c_miss} c_fa={c_fa}")


def bayes_threshold(p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR threshold of the Bayes decision for a prior and costs.

    Accepting costs ``c_fa`` when wrong and rejecting ``c_miss``; the expected cost is least
    when accepting iff ``P(same | x) * c_miss >= P(different | x) * c_fa``, i.e. iff

        llr >= ln(c_fa / c_miss) - logit(p_target)      (logit(p) = ln(p / (1 - p)))

    p_target 0.01 with unit costs gives ln 99 = 4.595. Raises UsageError for a prior outside
    (0, 1) or non-positive costs.
    """
    _check_costs(p_target, c_miss, c_fa)
    return float(np.log(c_fa / c_miss) - np.log(p_target / (1.0 - p_target)))


def detection_cost(
    frr: float, far: float, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised detection cost of decisions with miss rate ``frr`` and false-accept rate
    ``far`` (fractions): ``(c_miss p FRR + c_fa (1 - p) FAR) / min(c_miss p, c_fa (1 - p))``.

    1.0 is the cost of the better of the two trivial systems (accept all, reject all).
    """
    _check_costs(p_target, c_miss, c_fa)
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def act_dcf(
    target_llrs: npt.ArrayLike,
    nontarget_llrs: npt.ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    threshold: float | None = None,
) -> float:
    """Actual normalised detection cost of accepting iff ``llr >= threshold``.

    threshold: None means the Bayes threshold of (p_target, c_miss, c_fa), which is what
    makes this the *actual* DCF of calibrated LLRs; pass any other threshold (on any score)
    to cost those decisions instead. Never below :func:`min_dcf` of the same scores.
    """
    tgt, non = _split(target_llrs, nontarget_llrs, allow_infinite=True)
    t = bayes_threshold(p_target, c_miss, c_fa) if threshold is None else float(threshold)
    frr = float(np.mean(tgt < t))
    far = float(np.mean(non >= t))
    return detection_cost(frr, far, p_target, c_miss, c_fa)


def cllr(target_llrs: npt.ArrayLike, nontarget_llrs: npt.ArrayLike) -> float:
    """Log-likelihood-ratio cost (Brummer), in bits:

        0.5 * (mean over targets of log2(1 + e^-llr) + mean over non-targets of log2(1 + e^llr))

    0 for perfect, confident LLRs; 1 for the uninformative llr = 0; unbounded for confident
    errors. LLRs may be +-inf (a confident error then costs inf).
    """
    tgt, non = _split(target_llrs, nontarget_llrs, allow_infinite=True)
    # logaddexp(0, x) = ln(1 + e^x) without overflow.
    miss = np.mean(np.logaddexp(0.0, -tgt))
    false_alarm = np.mean(np.logaddexp(0.0, non))
    return float(0.5 * (miss + false_alarm) / np.log(2.0))


def pav_llrs(
    target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The best monotonic (non-decreasing) map from scores to LLRs on these very trials.

    Pool-adjacent-violators on the scores sorted ascending, tied scores pooled into one
    block first (so equal scores always get equal LLRs): each block's fraction of targets p
    becomes ``llr = logit(p) - ln(N_target / N_nontarget)``, i.e. the posterior with the
    trials' own proportion taken out. This is the ROC convex hull turned into LLRs (BOSARIS
    ``opt_loglr``). Returns ``(target_llrs, nontarget_llrs)`` in the input order; values may
    be +-inf where a block holds only one class.
    """
    tgt = np.asarray(target_scores, dtype=np.float64).ravel()
    non = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    _split(tgt, non)  # validation only
    scores = np.concatenate([tgt, non])
    labels = np.concatenate([np.ones(tgt.size), np.zeros(non.size)])
    values, block_of = np.unique(scores, return_inverse=True)
    hits = np.bincount(block_of, weights=labels, minlength=values.size)
    counts = np.bincount(block_of, minlength=values.size).astype(np.float64)
    # Stack of pooled blocks: (targets, trials, how many tie-blocks it covers).
    pooled_hits: list[float] = []
    pooled_counts: list[float] = []
    pooled_width: list[int] = []
    for h, c in zip(hits, counts, strict=True):
        pooled_hits.append(float(h))
        pooled_counts.append(float(c))
        pooled_width.append(1)
        # Merge while the new block's target fraction is below its predecessor's
        # (compared by cross-multiplying, exact for integer counts).
        while (
            len(pooled_hits) > 1
            and pooled_hits[-1] * pooled_counts[-2] <= pooled_hits[-2] * pooled_counts[-1]
        ):
            h2, c2, w2 = pooled_hits.pop(), pooled_counts.pop(), pooled_width.pop()
            pooled_hits[-1] += h2
            pooled_counts[-1] += c2
            pooled_width[-1] += w2
    fraction = np.repeat(np.array(pooled_hits) / np.array(pooled_counts), pooled_width)
    with np.errstate(divide="ignore"):
        log_odds = np.log(fraction) - np.log1p(-fraction)
    llr = log_odds - np.log(tgt.size / non.size)
    per_trial = llr[block_of]
    return per_trial[: tgt.size], per_trial[tgt.size :]


def min_cllr(target_scores: npt.ArrayLike, nontarget_scores: npt.ArrayLike) -> float:
    """Cllr (bits) after the best monotonic recalibration on these trials (:func:`pav_llrs`):
    the discrimination part of Cllr, the loss no calibration of these scores can remove.
    Always in [0, 1]."""
    return cllr(*pav_llrs(target_scores, nontarget_scores))


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
