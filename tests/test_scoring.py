"""The cosine rule and the error-rate measures, by hand and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from speakerdb import scoring
from speakerdb.errors import UsageError


def test_cosine_of_known_vectors():
    assert scoring.cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert scoring.cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert scoring.cosine([1, 0], [-3, 0]) == pytest.approx(-1.0)
    assert scoring.cosine([1, 1], [1, 0]) == pytest.approx(np.sqrt(0.5))


def test_cosine_rejects_zero_and_mismatched_vectors():
    with pytest.raises(UsageError):
        scoring.cosine([0, 0], [1, 0])
    with pytest.raises(UsageError):
        scoring.cosine([1, 0, 0], [1, 0])
    with pytest.raises(UsageError):
        scoring.cosine([np.nan, 1], [1, 0])


def test_accept_is_inclusive_at_the_threshold():
    assert scoring.accept(0.7, 0.7)
    assert not scoring.accept(0.6999999, 0.7)


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), float("inf"), "high"])
def test_threshold_must_be_a_cosine(bad):
    with pytest.raises(UsageError):
        scoring.validate_threshold(bad)


unit_vectors = arrays(np.float32, (4, 8), elements=st.floats(-1, 1, width=32)).filter(
    lambda a: np.all(np.linalg.norm(a, axis=1) > 1e-3)
)


@given(unit_vectors)
def test_score_matrix_matches_pairwise_cosine_and_is_symmetric(vectors):
    matrix = scoring.cosine_scores(vectors, vectors)
    assert matrix.shape == (4, 4)
    assert np.allclose(matrix, matrix.T)
    assert np.allclose(np.diag(matrix), 1.0)
    assert np.all(np.abs(matrix) <= 1.0)
    assert matrix[1, 2] == scoring.cosine(vectors[1], vectors[2])


def test_eer_hand_worked():
    # t=0.4: FRR 0,   FAR 1/4 (gap 1/4)
    # t=0.5: FRR 1/3, FAR 1/4 (gap 1/12, the smallest)
    # t=0.8: FRR 1/3, FAR 0   (gap 1/3)
    tgt = [0.9, 0.8, 0.4]
    non = [0.5, 0.3, 0.2, 0.1]
    rate, threshold = scoring.eer(tgt, non)
    assert threshold == pytest.approx(0.5)
    assert rate == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_eer_of_separated_classes_is_zero_with_midpoint_threshold():
    rate, threshold = scoring.eer([0.8, 0.9], [0.1, 0.5])
    assert rate == 0.0
    assert threshold == pytest.approx(0.65)


def test_eer_needs_both_classes():
    with pytest.raises(UsageError):
        scoring.eer([], [0.1])


def test_min_dcf_hand_worked():
    # p=0.5, costs 1: DCF(t) = (0.5 FRR + 0.5 FAR) / 0.5 = FRR + FAR.
    tgt = [0.9, 0.8, 0.4]
    non = [0.5, 0.3, 0.2, 0.1]
    cost, threshold = scoring.min_dcf(tgt, non, p_target=0.5)
    # t=0.8: FRR 1/3, FAR 0 -> 1/3 ; t=0.4: FRR 0, FAR 1/4 -> 1/4 (the minimum)
    assert cost == pytest.approx(0.25)
    assert threshold == pytest.approx(0.4)


def test_threshold_at_far_hand_worked():
    non = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    t = scoring.threshold_at_far(non, 0.1)  # 1 of 10 may pass: 0.95
    assert 0.9 < t <= 0.95
    assert np.mean(np.array(non) >= t) == pytest.approx(0.1)
    t0 = scoring.threshold_at_far(non, 0.0)
    assert t0 > 0.95 and np.mean(np.array(non) >= t0) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(5, 200),
    st.integers(5, 400),
    st.floats(0.0, 3.0),
)
def test_error_rates_agree_with_sklearn_roc(seed, n_target, n_non, separation):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    # Rounded scores produce ties, the hard case.
    tgt = np.round(rng.normal(separation, 1, n_target), 2)
    non = np.round(rng.normal(0, 1, n_non), 2)
    rates = scoring.error_rates(tgt, non)
    labels = np.r_[np.ones(n_target), np.zeros(n_non)]
    fpr, tpr, thr = roc_curve(labels, np.r_[tgt, non], drop_intermediate=False)
    for f, t, th in zip(fpr, tpr, thr, strict=True):
        if not np.isfinite(th):
            continue
        i = int(np.searchsorted(rates.thresholds, th))
        assert rates.thresholds[i] == th
        assert rates.far[i] == pytest.approx(f)
        assert rates.frr[i] == pytest.approx(1 - t)
    rate, threshold = scoring.eer(tgt, non)
    # The EER lies between the FAR and FRR of its own threshold, and no other threshold
    # brings FAR and FRR closer.
    gaps = np.abs((1 - tpr) - fpr)
    assert abs(np.mean(non >= threshold) - np.mean(tgt < threshold)) <= gaps.min() + 1e-12
    assert min(np.mean(non >= threshold), np.mean(tgt < threshold)) - 1e-12 <= rate
    assert rate <= max(np.mean(non >= threshold), np.mean(tgt < threshold)) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.001, 0.5))
def test_threshold_at_far_bounds_false_accepts(seed, far):
    non = np.round(np.random.default_rng(seed).normal(0, 1, 300), 2)
    t = scoring.threshold_at_far(non, far)
    assert np.mean(non >= t) <= far + 1e-12
    # And it is the lowest such threshold: the next score down would accept too many.
    below = non[non < t]
    if below.size:
        assert np.mean(non >= below.max()) > far


def test_as_norm_hand_worked():
    # Enrollment side cohort top-2 of [0.1, 0.3, 0.5]: {0.5, 0.3} -> mean 0.4, sd 0.1.
    # Test side top-2 of [0.0, 0.2, 0.2]: {0.2, 0.2} -> mean 0.2, sd 0 -> floored at 1e-6.
    cohort_e = np.array([[0.1, 0.3, 0.5] + [0.0] * 8])
    cohort_t = np.array([[0.0, 0.2, 0.2] + [-0.1] * 8])
    value = scoring.as_norm([0.6], cohort_e, cohort_t, top_n=2)[0]
    assert value == pytest.approx(0.5 * ((0.6 - 0.4) / 0.1 + (0.6 - 0.2) / 1e-6))


def test_as_norm_is_invariant_to_scaling():
    rng = np.random.default_rng(3)
    scores = rng.uniform(-1, 1, 5)
    e = rng.uniform(-1, 1, (5, 40))
    t = rng.uniform(-1, 1, (5, 40))
    base = scoring.as_norm(scores, e, t, top_n=10)
    # Scaling raw score and both cohorts by the same factor leaves z-scores unchanged.
    assert np.allclose(scoring.as_norm(2 * scores, 2 * e, 2 * t, top_n=10), base)


def test_as_norm_needs_a_cohort():
    with pytest.raises(UsageError, match="cohort"):
        scoring.as_norm([0.5], np.zeros((1, 3)), np.zeros((1, 3)))
