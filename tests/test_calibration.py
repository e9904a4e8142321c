"""Calibration: LLR metrics (Cllr, minCllr, actual DCF), the prior-weighted logistic fit, its
serialisation, the quality measures on real speech, and the leave-one-set-out protocol."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ROOT, by_speaker, require_data, resample_to
from speakerdb import _calibration as cal
from speakerdb import scoring
from speakerdb._quality import speech_bandwidth_hz
from speakerdb.enroll._evaluation import calibration_figures
from speakerdb.errors import ModelError, UsageError

MODEL = {"name": "test-model", "weights_sha256": "0" * 64, "dimension": 16}


# --- metrics ------------------------------------------------------------------------------------


def slow_pav_llrs(tgt, non):
    """Independent reference: isotonic regression by repeatedly merging the first violating
    pair of adjacent blocks (O(n^2)), tied scores forming one block from the start."""
    scores = np.concatenate([tgt, non])
    labels = np.concatenate([np.ones(len(tgt)), np.zeros(len(non))])
    values = sorted(set(scores.tolist()))
    blocks = [[labels[scores == v].sum(), float((scores == v).sum()), [v]] for v in values]
    merged = True
    while merged:
        merged = False
        for i in range(len(blocks) - 1):
            if blocks[i][0] / blocks[i][1] >= blocks[i + 1][0] / blocks[i + 1][1]:
                h, c, vs = blocks.pop(i + 1)
                blocks[i][0] += h
                blocks[i][1] += c
                blocks[i][2] += vs
                merged = True
                break
    fraction = {v: b[0] / b[1] for b in blocks for v in b[2]}
    with np.errstate(divide="ignore"):
        llr = {
            v: math.log(p) - math.log1p(-p) if 0 < p < 1 else (math.inf if p == 1 else -math.inf)
            for v, p in fraction.items()
        }
    offset = math.log(len(tgt) / len(non))
    return (
        np.array([llr[v] - offset for v in tgt]),
        np.array([llr[v] - offset for v in non]),
    )


score_lists = st.lists(st.integers(0, 12), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(score_lists, score_lists)
def test_pav_and_min_cllr_match_a_slow_reference(tgt_ints, non_ints):
    # Small integer scores: many ties, the hard case.
    tgt = np.array(tgt_ints, dtype=float) / 4
    non = np.array(non_ints, dtype=float) / 4 - 0.5
    fast = scoring.pav_llrs(tgt, non)
    slow = slow_pav_llrs(tgt, non)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(np.isinf(a), np.isinf(b))
        assert np.allclose(a[np.isfinite(a)], b[np.isfinite(b)])
    assert scoring.min_cllr(tgt, non) == pytest.approx(scoring.cllr(*slow))
    assert 0.0 <= scoring.min_cllr(tgt, non) <= 1.0 + 1e-12


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.floats(0.0, 4.0),
    st.sampled_from([0.5, 0.1, 0.01, 0.001]),
    st.floats(0.2, 5.0),
)
def test_act_dcf_of_pav_llrs_is_min_dcf(seed, separation, p_target, c_fa):
    # The PAV LLRs are the ROC convex hull: their Bayes decisions reach the minimum DCF.
    rng = np.random.default_rng(seed)
    tgt = np.round(rng.normal(separation, 1, 150), 1)
    non = np.round(rng.normal(0, 1, 600), 1)
    pav_tgt, pav_non = scoring.pav_llrs(tgt, non)
    minimum = scoring.min_dcf(tgt, non, p_target, 1.0, c_fa)[0]
    assert scoring.act_dcf(pav_tgt, pav_non, p_target, 1.0, c_fa) == pytest.approx(minimum)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(-3, 3), st.floats(0.05, 5))
def test_min_cllr_bounds_every_affine_calibration(seed, shift, scale):
    rng = np.random.default_rng(seed)
    tgt, non = rng.normal(1.5, 1, 200), rng.normal(0, 1, 500)
    floor = scoring.min_cllr(tgt, non)
    assert floor <= scoring.cllr(scale * tgt + shift, scale * non + shift) + 1e-12
    assert floor <= scoring.cllr(np.zeros(3), np.zeros(3)) + 1e-12


def test_cllr_of_calibrated_gaussian_llrs_matches_numerical_integration():
    # Scores ~ N(+-d/2, 1) have LLR d*x, which is N(+d^2/2, d^2) under targets, N(-d^2/2, d^2)
    # under non-targets; Cllr is then E_tgt[log2(1 + e^-L)] (both halves are equal).
    d = 2.0
    rng = np.random.default_rng(0)
    tgt = d * rng.normal(d / 2, 1, 200_000)
    non = d * rng.normal(-d / 2, 1, 200_000)
    grid = np.linspace(d * d / 2 - 12 * d, d * d / 2 + 12 * d, 40_001)
    density = np.exp(-0.5 * ((grid - d * d / 2) / d) ** 2) / (d * math.sqrt(2 * math.pi))
    expected = np.trapezoid(density * np.logaddexp(0, -grid) / math.log(2), grid)
    assert scoring.cllr(tgt, non) == pytest.approx(expected, abs=3e-3)
    # Calibrated: PAV cannot do much better (only by fitting the sample's noise).
    assert scoring.cllr(tgt, non) - scoring.min_cllr(tgt, non) < 0.01
    # Miscalibrated by a shift or a scale, Cllr rises and minCllr (rank-based) does not move.
    assert scoring.cllr(tgt + 2, non + 2) > scoring.cllr(tgt, non) + 0.05
    assert scoring.min_cllr(3 * tgt, 3 * non) == pytest.approx(scoring.min_cllr(tgt, non))


def test_cllr_and_act_dcf_edge_values():
    assert scoring.cllr([0.0, 0.0], [0.0]) == pytest.approx(1.0)
    assert scoring.cllr([np.inf], [-np.inf]) == 0.0
    assert scoring.cllr([-np.inf], [0.0]) == np.inf
    assert scoring.min_cllr([2.0, 3.0], [0.0, 1.0]) == 0.0  # separated
    # Everything rejected costs the trivial system's 1.0; hand-worked mixed case at p=0.5:
    # FRR 1/2, FAR 1/4 -> (0.5 * 0.5 + 0.5 * 0.25) / 0.5 = 0.75.
    assert scoring.act_dcf([-9.0], [-9.0]) == pytest.approx(1.0)
    assert scoring.act_dcf([1.0, -1.0], [0.5, -1, -2, -3], p_target=0.5) == pytest.approx(0.75)
    with pytest.raises(UsageError):
        scoring.cllr([np.nan], [0.0])


def test_bayes_threshold_convention():
    assert scoring.bayes_threshold(0.01) == pytest.approx(math.log(99))
    assert scoring.bayes_threshold(0.5) == pytest.approx(0.0)
    # A false accept ten times as costly raises the bar by ln 10.
    assert scoring.bayes_threshold(0.5, 1.0, 10.0) == pytest.approx(math.log(10))
    op = cal.OperatingPoint(0.2, 1.0, 4.0)
    assert op.threshold == pytest.approx(math.log(4) - math.log(0.25))
    assert cal.OperatingPoint(op.effective_prior).threshold == pytest.approx(op.threshold)
    for bad in ((0.0, 1, 1), (1.0, 1, 1), (0.1, 0, 1), (0.1, 1, -1)):
        with pytest.raises(UsageError):
            cal.OperatingPoint(*bad)


def test_calibration_figures_follow_from_the_llrs():
    rng = np.random.default_rng(5)
    tgt, non = rng.normal(6, 3, 300), rng.normal(-6, 3, 3000)
    f = calibration_figures(tgt, non)
    assert f.threshold == pytest.approx(math.log(99))
    assert f.far == pytest.approx(np.mean(non >= f.threshold))
    assert f.frr == pytest.approx(np.mean(tgt < f.threshold))
    assert f.act_dcf == pytest.approx(scoring.detection_cost(f.frr, f.far, 0.01))
    assert f.act_dcf >= f.min_dcf - 1e-12 and f.cllr >= f.min_cllr - 1e-12
    # The FAR bound of calibrated LLRs at the Bayes threshold: at most e^-t (here ~1 %).
    assert f.far <= math.exp(-f.threshold) + 3 / math.sqrt(non.size)


# --- fitting ------------------------------------------------------------------------------------


def synthetic_trials(rng, n_tgt, n_non, d=2.5, k=0.8):
    """Scores whose true LLR is linear in (score, log_speech_min): per trial a duration q =
    ln(seconds); targets ~ N(k q + d/2, 1), non-targets ~ N(k q - d/2, 1), so
    llr = d * score - d * k * q exactly (the true weights)."""

    def draw(n, sign):
        seconds = np.exp(rng.uniform(np.log(0.5), np.log(30), n))
        q = np.log(seconds)
        return rng.normal(k * q + sign * d / 2, 1), seconds

    s_t, sec_t = draw(n_tgt, 1)
    s_n, sec_n = draw(n_non, -1)
    inputs = cal.TrialQuality.of(
        np.r_[s_t, s_n], np.r_[sec_t, sec_n], np.r_[sec_t, sec_n] * 3, 1
    )  # enrollment side longer, so log_speech_min is the probe's
    labels = np.r_[np.ones(n_tgt), np.zeros(n_non)]
    return inputs, labels, (d, -d * k, 0.0)


@pytest.mark.parametrize("p_fit", [0.5, 0.01])
def test_fit_recovers_known_parameters(p_fit):
    rng = np.random.default_rng(1)
    inputs, labels, (w_score, w_dur, bias) = synthetic_trials(rng, 20_000, 60_000)
    fitted = cal.fit_calibration(
        inputs,
        labels,
        model=MODEL,
        features=("score", "log_speech_min"),
        p_fit=p_fit,
        regularisation=0.0,
    )
    assert fitted.weights[0] == pytest.approx(w_score, rel=0.05)
    assert fitted.weights[1] == pytest.approx(w_dur, rel=0.08)
    assert fitted.bias == pytest.approx(bias, abs=0.25)
    # The fitted LLRs are calibrated on fresh data from the same source.
    test_inputs, test_labels, _ = synthetic_trials(np.random.default_rng(2), 5000, 20_000)
    llr = fitted.llrs(test_inputs)
    t, n = llr[test_labels == 1], llr[test_labels == 0]
    assert scoring.cllr(t, n) - scoring.min_cllr(t, n) < 0.02


def test_outputs_are_llrs_whatever_the_class_proportions_and_prior():
    # Scores that carry no information: the LLR must be ~0 everywhere, i.e. neither the
    # proportion of targets in the trials nor the fitting prior leaks into it.
    rng = np.random.default_rng(3)
    for n_tgt, n_non in ((200, 20_000), (5000, 500)):
        inputs = cal.TrialQuality.of(rng.normal(0, 1, n_tgt + n_non), 2.0, 2.0)
        labels = np.r_[np.ones(n_tgt), np.zeros(n_non)]
        for p_fit in (0.01, 0.5, 0.9):
            fitted = cal.fit_calibration(
                inputs, labels, model=MODEL, features=("score",), p_fit=p_fit
            )
            # Were the prior or the proportion left in, the bias would be near logit(p_fit)
            # or ln(n_tgt / n_non): -4.6 ... +2.3.
            assert abs(fitted.bias) < 0.2 and abs(fitted.weights[0]) < 0.15


def test_group_weights_balance_classes_and_groups():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    groups = np.array(["a", "a", "a", "a", "a", "b", "b", "b", "b", "b"])
    w = cal.group_weights(labels, groups)
    assert w[labels == 1].sum() == pytest.approx(1.0)
    assert w[labels == 0].sum() == pytest.approx(1.0)
    for g in "ab":
        for y in (0, 1):
            assert w[(groups == g) & (labels == y)].sum() == pytest.approx(0.5)


def test_replicating_a_group_changes_nothing():
    # Group-and-class normalised weights: three copies of every trial fit the same model.
    rng = np.random.default_rng(4)
    inputs, labels, _ = synthetic_trials(rng, 300, 900)
    one = cal.fit_calibration(inputs, labels, model=MODEL, features=("score", "log_speech_min"))
    three = cal.fit_calibration(
        cal.TrialQuality.concatenate([inputs] * 3),
        np.tile(labels, 3),
        model=MODEL,
        features=("score", "log_speech_min"),
    )
    assert np.allclose(one.weights, three.weights, rtol=1e-6)
    assert one.bias == pytest.approx(three.bias, rel=1e-6)


def fitted_example(**kwargs) -> cal.Calibration:
    rng = np.random.default_rng(6)
    inputs, labels, _ = synthetic_trials(rng, 2000, 8000)
    bandwidth = rng.uniform(3000, 8000, len(inputs))
    inputs = cal.TrialQuality(
        inputs.score,
        inputs.probe_seconds,
        inputs.enroll_seconds,
        rng.integers(1, 6, len(inputs)).astype(float),
        bandwidth,
        bandwidth,
    )
    groups = rng.choice(["x/pairs", "y/enroll"], len(inputs))
    return cal.fit_calibration(
        inputs,
        labels,
        model=MODEL,
        features=(*cal.DEFAULT_FEATURES, "log_enroll_count"),
        groups=groups,
        trials_sha256="ab" * 32,
        created="2025-01-01T00:00:00+00:00",
        **kwargs,
    )


def test_serialisation_round_trips_through_json():
    fitted = fitted_example()
    text = json.dumps(fitted.to_dict())
    loaded = cal.Calibration.from_dict(json.loads(text))
    assert loaded == fitted
    assert loaded.fit.trials_sha256 == "ab" * 32
    assert set(loaded.fit.groups) == {"x/pairs", "y/enroll"}
    assert sum(t for t, _ in loaded.fit.groups.values()) == loaded.fit.target_trials
    assert loaded.matches(MODEL["name"], MODEL["weights_sha256"], MODEL["dimension"])
    assert not loaded.matches(MODEL["name"], "1" * 64, MODEL["dimension"])
    q = cal.TrialQuality.of([0.3, 0.9], [1.0, 8.0], [3.0, 20.0], [1, 3], 4000.0, 7000.0)
    assert np.array_equal(loaded.llrs(q), fitted.llrs(q))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(format="speakerdb-calibration/0"),
        lambda d: d["features"].append({"name": "loudness", "weight": 1.0}),
        lambda d: d["features"][0].update(weight=float("nan")),
        lambda d: d.pop("bias"),
        lambda d: d["model"].pop("weights_sha256"),
        lambda d: d.update(far_thresholds=[[0.01]]),
        lambda d: d.update(fit="nothing"),
    ],
)
def test_malformed_calibrations_are_refused_in_one_line(damage):
    data = json.loads(json.dumps(fitted_example().to_dict()))
    damage(data)
    with pytest.raises(ModelError) as info:
        cal.Calibration.from_dict(data)
    assert "\n" not in str(info.value)


def test_batch_equals_single_trials():
    fitted = fitted_example()
    rng = np.random.default_rng(7)
    n = 50
    args = (
        rng.uniform(0.2, 1.0, n),
        rng.uniform(0.4, 40, n),
        rng.uniform(0.4, 90, n),
        rng.integers(1, 6, n),
        rng.uniform(2500, 8000, n),
        rng.uniform(2500, 8000, n),
    )
    batch = fitted.llrs(cal.TrialQuality.of(*args))
    for i in range(n):
        score, probe, enroll, count, probe_hz, enroll_hz = (a[i] for a in args)
        single = fitted.llr(
            float(score), float(probe), float(enroll), int(count), float(probe_hz), float(enroll_hz)
        )
        assert single == batch[i]


def test_quality_inputs_are_clipped_to_the_fitted_range():
    fitted = fitted_example()
    lo, _ = fitted.input_ranges["probe_seconds"]
    inside = fitted.llr(0.8, lo, 10.0, 1, 5000.0, 5000.0)
    assert fitted.llr(0.8, lo / 10, 10.0, 1, 5000.0, 5000.0) == inside
    b_lo, _ = fitted.input_ranges["probe_bandwidth_hz"]
    assert fitted.llr(0.8, 5.0, 10.0, 1, b_lo / 2, b_lo / 2) == fitted.llr(
        0.8, 5.0, 10.0, 1, b_lo, b_lo
    )
    unclipped = fitted_example(clip_inputs=False)
    assert unclipped.input_ranges == {}


def test_bandwidth_features_need_known_bandwidths():
    fitted = fitted_example()
    with pytest.raises(UsageError, match="bandwidth"):
        fitted.llr(0.8, 5.0, 10.0)  # bandwidths default to NaN: unknown
    duration_only = cal.fit_calibration(
        cal.TrialQuality.of([0.1, 0.9, 0.2, 0.8], 3.0, 3.0),
        [0, 1, 0, 1],
        model=MODEL,
        features=("score", "log_speech_min"),
    )
    assert math.isfinite(duration_only.llr(0.8, 5.0, 10.0))


def test_threshold_at_far_on_the_fit_data():
    rng = np.random.default_rng(6)
    inputs, labels, _ = synthetic_trials(rng, 2000, 8000)
    fitted = cal.fit_calibration(inputs, labels, model=MODEL, features=("score", "log_speech_min"))
    non = fitted.llrs(inputs)[labels == 0]
    for far, threshold in fitted.far_thresholds:
        assert fitted.threshold_at_far(far) == pytest.approx(threshold)
        assert np.mean(non >= threshold) <= far + 1e-12
    # Lower FAR, higher threshold; in between, interpolated.
    values = [t for _, t in fitted.far_thresholds]
    assert values == sorted(values, reverse=True)
    assert values[4] <= fitted.threshold_at_far(0.015) <= values[3]
    for bad in (0.0001, 0.5):
        with pytest.raises(UsageError, match="false-accept rate"):
            fitted.threshold_at_far(bad)


def test_inputs_are_validated():
    for bad in (
        dict(score=np.nan, probe_seconds=1, enroll_seconds=1),
        dict(score=0.5, probe_seconds=0, enroll_seconds=1),
        dict(score=0.5, probe_seconds=1, enroll_seconds=-2),
        dict(score=0.5, probe_seconds=1, enroll_seconds=1, enroll_count=0),
        dict(score=0.5, probe_seconds=1, enroll_seconds=1, probe_bandwidth_hz=-5),
        dict(score=[0.5, 0.6], probe_seconds=[1, 2, 3], enroll_seconds=1),
    ):
        with pytest.raises(UsageError):
            cal.TrialQuality.of(**bad)
    inputs = cal.TrialQuality.of([0.1, 0.9], 3.0, 3.0)
    with pytest.raises(UsageError):
        cal.fit_calibration(inputs, [1, 1], model=MODEL)  # one class only
    with pytest.raises(UsageError):
        cal.fit_calibration(inputs, [0, 1, 1], model=MODEL)
    with pytest.raises(UsageError):
        cal.fit_calibration(inputs, [0, 1], model=MODEL, features=("volume",))


def test_enrollment_quality_sums_and_weights():
    side = cal.enrollment_quality([2.0, 6.0], [4000.0, 8000.0])
    assert side.speech_seconds == 8.0 and side.count == 2
    assert side.bandwidth_hz == pytest.approx((2 * 4000 + 6 * 8000) / 8)
    assert math.isnan(cal.enrollment_quality([2.0, 6.0], [4000.0, np.nan]).bandwidth_hz)
    assert math.isnan(cal.enrollment_quality([3.0]).bandwidth_hz)
    with pytest.raises(UsageError):
        cal.enrollment_quality([])
    with pytest.raises(UsageError):
        cal.enrollment_quality([1.0, 2.0], [4000.0])


def test_the_bundled_calibration_belongs_to_the_bundled_model():
    from speakerdb import model_identity

    identity = model_identity()
    bundled = cal.bundled_calibration(identity.name, identity.weights_sha256, identity.dimension)
    assert bundled is not None
    assert bundled.features == cal.DEFAULT_FEATURES
    assert bundled.fit.p_fit == pytest.approx(cal.DEFAULT_OPERATING_POINT.effective_prior)
    assert cal.bundled_calibration(identity.name, "f" * 64, identity.dimension) is None
    assert cal.bundled_calibration("no-such-family", identity.weights_sha256, 256) is None


# --- quality measures on real speech ------------------------------------------------------------


def test_bandwidth_of_synthetic_signals():
    rate = 16_000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t)
    assert speech_bandwidth_hz(tone, rate) == pytest.approx(1000, abs=40)
    noise = np.random.default_rng(0).standard_normal(2 * rate)
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(noise.size, 1 / rate) > 3400] = 0
    narrow = np.fft.irfft(spectrum, noise.size)
    assert 3200 <= speech_bandwidth_hz(narrow, rate) <= 3440
    assert speech_bandwidth_hz(noise, rate) > 7900  # white: the top of the band
    assert speech_bandwidth_hz(noise, 48_000) <= 8000  # nothing above 8 kHz counts
    with pytest.raises(UsageError):
        speech_bandwidth_hz(np.zeros(rate), rate)
    with pytest.raises(UsageError):
        speech_bandwidth_hz(tone[:100], rate)


def test_bandwidth_tells_the_phone_line_from_the_original():
    data = require_data()
    original = data / "vctk" / "p225" / "p225_003.wav"
    phone = data / "telephone" / "vctk" / "p225" / "p225_003.wav"
    samples, rate = sf.read(original, dtype="float32")
    narrow, narrow_rate = sf.read(phone, dtype="float32")
    assert narrow_rate == 8000
    wide_hz = speech_bandwidth_hz(samples, rate)
    phone_hz = speech_bandwidth_hz(narrow, narrow_rate)
    assert wide_hz > 5000 and phone_hz < 3500
    # The measure does not depend on the rate the same audio is held at.
    upsampled = resample_to(narrow, narrow_rate, 16_000)
    assert speech_bandwidth_hz(upsampled, 16_000) == pytest.approx(phone_hz, abs=80)


@pytest.fixture(scope="module")
def vctk_quality(model):
    """vctk recordings whole, 1-second cuts of them, and their phone-line copies: vectors,
    speech seconds, bandwidths and speakers."""
    data = require_data()
    rows = []
    for speaker, paths in sorted(by_speaker("vctk").items()):
        for path in paths:
            samples, rate = sf.read(path, dtype="float32")
            phone = data / "telephone" / path.relative_to(data)
            narrow, narrow_rate = sf.read(phone, dtype="float32")
            start = len(samples) // 3
            rows.append(("whole", speaker, samples, rate))
            rows.append(("cut", speaker, samples[start : start + rate], rate))
            rows.append(("phone", speaker, narrow, narrow_rate))
    out = {}
    for kind in ("whole", "cut", "phone"):
        chosen = [r for r in rows if r[0] == kind]
        rate = chosen[0][3]
        results = model.embed([r[2] for r in chosen], sample_rate=rate)
        keep = [i for i, r in enumerate(results) if r.vector is not None]
        out[kind] = {
            "vectors": np.array([results[i].vector for i in keep], dtype=np.float64),
            "seconds": np.array([results[i].speech_seconds for i in keep]),
            "bandwidth": np.array([speech_bandwidth_hz(chosen[i][2], rate) for i in keep]),
            "speakers": np.array([chosen[i][1] for i in keep]),
        }
    return out


def pair_inputs(side):
    i, j = np.triu_indices(len(side["speakers"]), 1)
    scores = np.einsum("ij,ij->i", side["vectors"][i], side["vectors"][j])
    inputs = cal.TrialQuality.of(
        scores,
        side["seconds"][j],
        side["seconds"][i],
        1,
        side["bandwidth"][j],
        side["bandwidth"][i],
    )
    return inputs, (side["speakers"][i] == side["speakers"][j]).astype(float)


def test_quality_terms_have_the_expected_signs_on_real_speech(vctk_quality):
    whole, whole_y = pair_inputs(vctk_quality["whole"])
    cut, cut_y = pair_inputs(vctk_quality["cut"])
    phone, phone_y = pair_inputs(vctk_quality["phone"])

    # Longer speech separates speakers better: targets and non-targets lie further apart,
    # in units of their spread ...
    def separation(inputs, y):
        t, n = inputs.score[y == 1], inputs.score[y == 0]
        return (t.mean() - n.mean()) / np.sqrt(0.5 * (t.var() + n.var()))

    assert separation(whole, whole_y) > separation(cut, cut_y)
    # ... so a fit lets the score count for more when speech is long (a positive
    # score x duration interaction) ...
    both = cal.TrialQuality.concatenate([whole, cut])
    labels = np.r_[whole_y, cut_y]
    groups = ["whole"] * len(whole_y) + ["cut"] * len(cut_y)
    fitted = cal.fit_calibration(
        both,
        labels,
        model=MODEL,
        features=("score", "log_speech_min", "score_x_log_speech_min"),
        groups=groups,
    )
    assert fitted.weights[2] > 0
    # ... and a narrow channel raises impostor scores, so the same cosine is weaker evidence
    # on a phone line: a positive weight on the narrower side's bandwidth.
    assert phone.score[phone_y == 0].mean() > whole.score[whole_y == 0].mean()
    channel = cal.fit_calibration(
        cal.TrialQuality.concatenate([whole, phone]),
        np.r_[whole_y, phone_y],
        model=MODEL,
        features=("score", "bandwidth_min_khz"),
        groups=["wide"] * len(whole_y) + ["phone"] * len(phone_y),
    )
    assert channel.weights[1] > 0


# --- the leave-one-set-out protocol ---------------------------------------------------------------


@pytest.fixture(scope="module")
def transfer():
    path = ROOT / "benchmarks" / "calibration_transfer.py"
    spec = importlib.util.spec_from_file_location("calibration_transfer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration_transfer"] = module
    spec.loader.exec_module(module)
    return module


def synthetic_groups(transfer, speakers_of):
    rng = np.random.default_rng(9)
    out = {}
    for name in transfer.SETS:
        out[name] = {}
        for kind in transfer.FIT_KINDS:
            n = 40
            labels = np.r_[np.ones(n // 2), np.zeros(n // 2)]
            spk = speakers_of[name]
            pairs = [
                frozenset((spk[i % len(spk)], spk[(i + (0 if y else 1)) % len(spk)]))
                for i, y in enumerate(labels)
            ]
            out[name][kind] = transfer.TrialGroup(
                name,
                kind,
                cal.TrialQuality.of(rng.uniform(0, 1, n) + labels, 2.0, 2.0, 1, 8000.0, 8000.0),
                labels,
                pairs,
                [f"{name} {kind} {i}" for i in range(n)],
            )
    return out


def test_leave_one_set_out_never_fits_on_the_left_out_set(transfer):
    speakers = {
        "librispeech": ["l1", "l2", "l3"],
        "vctk": ["v1", "v2"],
        "arabic-commands": ["a1", "a2"],
        "telephone": ["l1", "v1", "t9"],  # the phone line carries other sets' speakers
    }
    groups = synthetic_groups(transfer, speakers)
    seen: dict[int, list] = {}

    def recording_fit(training):
        seen[len(seen)] = training
        return transfer.fit_on(training, ("score",), 0.01, MODEL, "")

    folds = transfer.leave_one_set_out(groups, recording_fit)
    assert list(folds) == list(transfer.SETS)
    for (held_out, _), training in zip(folds.items(), seen.values(), strict=True):
        held_ids = {id(g) for g in groups[held_out].values()}
        held_lines = {line for g in groups[held_out].values() for line in g.lines}
        assert not any(id(g) in held_ids for g in training)
        assert all(g.set != held_out for g in training)
        assert not held_lines & {line for g in training for line in g.lines}
        # Every other set's groups are used, whole.
        assert {g.name for g in training} == {
            g.name for name, gs in groups.items() if name != held_out for g in gs.values()
        }
        # The fit's trial count and digest are those of the training groups alone.
        assert folds[held_out].fit.target_trials == sum(int(g.labels.sum()) for g in training)

    seen.clear()
    strict = transfer.leave_one_set_out(groups, recording_fit, strict=True)
    for (held_out, _), training in zip(strict.items(), seen.values(), strict=True):
        held_speakers = set(speakers[held_out])
        for g in training:
            assert g.set != held_out
            assert not any(pair & held_speakers for pair in g.speakers)
