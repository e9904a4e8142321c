"""Self-calibration from a database's own enrollments: the trial builder and its guards
(pure numpy, synthetic vectors); then on real phone-line speech, SQLite and PostgreSQL, CLI and
Python: a database too small refuses, a fit is stored and every answer names it with its fit
date, auto mode fits once there is enough and re-fits after a deletion, ``calibrate --show``.

Real recordings are embedded once per module and enrolled through the store with their
measured quality (the engine's own vectors, speech seconds and bandwidths), so that each test
fills its database in milliseconds."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import by_speaker, manifest, require_data
from speakerdb import SpeakerDB
from speakerdb import _calibration as cal
from speakerdb.cli import cli
from speakerdb.enroll import _enrollment_trials as et
from speakerdb.enroll._shrinkage import validated_weight
from speakerdb.errors import UsageError
from speakerdb.storage._records import EnrollRequest, NewUtterance

# --- the trial builder, on synthetic vectors -------------------------------------------------


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _synthetic(rng, counts, dimension=32, spread=0.6):
    vectors, speakers = [], []
    for s, n in enumerate(counts):
        centre = _unit(rng.normal(size=dimension))
        for _ in range(n):
            vectors.append(_unit(centre + spread * _unit(rng.normal(size=dimension))))
            speakers.append(s)
    n = len(speakers)
    return np.array(vectors), np.array(speakers), np.full(n, 3.0), np.full(n, 7000.0)


def test_near_duplicates_dropped_and_counted():
    rng = np.random.default_rng(0)
    v, s, sec, bw = _synthetic(rng, [3, 3, 1])
    copy = _unit(v[0] + 0.01 * _unit(rng.normal(size=v.shape[1])))  # cosine ~0.99995
    assert float(copy @ v[0]) > et.DUPLICATE_COSINE
    trials = et.build_trials(
        np.vstack([v, copy]), np.append(s, 0), np.append(sec, 2.0), np.append(bw, 7000.0)
    )
    assert trials.duplicates == 1 and trials.recordings == 7
    # speaker 0 and 1 give 3 same-speaker trials each; the copy gave none
    assert trials.target_trials == 6
    assert et.keep_distinct(np.vstack([v, copy]), np.append(s, 0)).tolist() == [True] * 7 + [False]


def test_every_speaker_weighs_the_same():
    rng = np.random.default_rng(1)
    v, s, sec, bw = _synthetic(rng, [12, 2, 2, 3])
    trials = et.build_trials(v, s, sec, bw)
    w = trials.weights()
    for label in (0, 1):
        shares = [
            w[(trials.labels == label) & (trials.groups == g)].sum()
            for g in np.unique(trials.groups[trials.labels == label])
        ]
        assert np.allclose(shares, 1.0 / len(shares))
    # the heavy speaker's 12 same-speaker trials weigh what the light ones' 2 do
    assert trials.target_trials == 12 + 2 + 2 + 3


def test_different_speaker_voiceprints_built_like_same_speaker_ones():
    """The voiceprint a different-speaker trial is made against leaves one recording out, as
    a same-speaker trial's does: the recording counts on both sides match."""
    rng = np.random.default_rng(2)
    v, s, sec, bw = _synthetic(rng, [4, 4, 4, 1])
    trials = et.build_trials(v, s, sec, bw)
    q, y = trials.inputs, trials.labels
    assert set(q.enroll_count[y == 1].tolist()) == {3.0}
    assert set(q.enroll_count[y == 0].tolist()) == {3.0, 1.0}  # the single: its only one
    whole = et.build_trials(v, s, sec, bw, matched=False)
    assert set(whole.inputs.enroll_count[whole.labels == 0].tolist()) == {4.0, 1.0}
    # 13 recordings against the voiceprints of the 3 other speakers each
    assert trials.nontarget_trials == 13 * 3


def test_many_different_speaker_trials_are_drawn_not_listed():
    rng = np.random.default_rng(6)
    v, s, sec, bw = _synthetic(rng, [3] * 12)
    drawn = et.build_trials(v, s, sec, bw, max_nontarget=50)
    assert drawn.nontarget_trials == 50 and drawn.target_trials == 36
    assert et.build_trials(v, s, sec, bw).nontarget_trials == 36 * 11  # all, when few
    # distinct pairs, never against the probe's own speaker (whose scores are far higher
    # with these vectors: same speaker ~0.7, different ~0 +- 0.2)
    non = drawn.inputs.score[drawn.labels == 0]
    assert np.unique(np.round(non, 12)).size == 50
    assert non.max() < drawn.inputs.score[drawn.labels == 1].min()


def test_too_few_speakers_refused_with_what_is_needed():
    rng = np.random.default_rng(3)
    trials = et.build_trials(*_synthetic(rng, [2, 2, 2, 1, 1]))
    with pytest.raises(UsageError, match=r"3 speakers with 2\+ distinct recordings \(need 5\)"):
        et.check_enough(trials)
    enough = et.build_trials(*_synthetic(rng, [2] * 5 + [1] * 5))
    et.check_enough(enough)


def test_shrinkage_mixes_the_two_calibrations():
    rng = np.random.default_rng(4)
    trials = et.build_trials(*_synthetic(rng, [3] * 6 + [1] * 6))
    model = {"name": "m", "weights_sha256": "0" * 64, "dimension": 32}
    own = cal.fit_calibration(trials.inputs, trials.labels, model=model, groups=trials.groups)
    other = cal.fit_calibration(trials.inputs, 1 - trials.labels, model=model)
    half = et.shrink_toward(own, other, 0.5)
    expected = 0.5 * own.llrs(trials.inputs) + 0.5 * other.llrs(trials.inputs)
    assert np.allclose(half.llrs(trials.inputs), expected)
    assert et.shrink_toward(own, None, 0.1) is own
    fitted = et.fit_self_calibration(trials, model=model, prior=other, p_fit=0.01)
    weight = trials.eligible / (trials.eligible + et.SHRINK_SPEAKERS)
    assert f"weight {weight:.2f} on the fit" in fitted.fit.note
    assert fitted.fit.target_trials == trials.target_trials


def test_affine_form_is_a_scale_and_offset_of_the_prior():
    rng = np.random.default_rng(5)
    trials = et.build_trials(*_synthetic(rng, [3] * 6 + [1] * 6))
    model = {"name": "m", "weights_sha256": "0" * 64, "dimension": 32}
    prior = cal.fit_calibration(
        cal.TrialQuality.of(trials.inputs.score * 2.0, 3.0, 3.0, 1, 7000.0, 7000.0),
        trials.labels,
        model=model,
    )
    base = prior.llrs(trials.inputs)
    for k in (0.0, et.SHRINK_SPEAKERS):
        fitted = et.fit_self_calibration(
            trials, model=model, prior=prior, p_fit=0.01, shrink_speakers=k, form="affine"
        )
        llr = fitted.llrs(trials.inputs)
        a, c = np.polyfit(base, llr, 1)
        assert np.allclose(a * base + c, llr)
        if k == 0.0:
            unshrunk = a
    # the prior is under-confident here (fitted on doubled scores): the fit scales it up, and
    # shrinkage pulls the scale back toward 1
    assert unshrunk > a > 1.0


def test_asnorm_trials_leave_both_speakers_out_of_the_cohort():
    """Every trial's z-score is AS-norm against the voiceprints of the speakers other than
    the probe's and the voiceprint's, computed here the long way with scoring.as_norm."""
    from speakerdb.scoring import as_norm

    rng = np.random.default_rng(7)
    v, s, sec, bw = _synthetic(rng, [3, 3, 2] + [1] * 11)
    raw = et.build_trials(v, s, sec, bw, seed=3)
    z = et.build_trials(v, s, sec, bw, seed=3, asnorm_top_n=5)
    assert np.array_equal(raw.labels, z.labels) and not np.allclose(
        raw.inputs.score, z.inputs.score
    )
    centroids = _unit(np.stack([v[s == k].sum(axis=0) for k in range(s.max() + 1)]))
    # the first same-speaker trial: recording 0 (speaker 0) against recordings 1 and 2
    probe, vp = v[0], _unit(v[1] + v[2])
    cohort = np.delete(centroids, [0], axis=0)  # a same-speaker trial: one speaker out
    expected = as_norm([probe @ vp], [vp @ cohort.T], [probe @ cohort.T], 5)[0]
    assert z.inputs.score[0] == pytest.approx(expected)
    # a different-speaker trial of a single-recording probe against a one-recording
    # voiceprint: both speakers are left out
    singles = [k for k in range(s.max() + 1) if (s == k).sum() == 1]
    trial = np.flatnonzero(
        (z.labels == 0) & np.isin(z.groups, singles) & (z.inputs.enroll_count == 1)
    )[0]
    k = int(z.groups[trial])
    probe = v[s == k][0]
    # the voiceprint: one recording of another speaker (a single, or one of speaker 2's two)
    j = next(i for i in range(len(s)) if np.isclose(probe @ v[i], raw.inputs.score[trial]))
    t = int(s[j])
    assert t != k
    cohort = np.delete(centroids, [k, t], axis=0)
    expected = as_norm([raw.inputs.score[trial]], [v[j] @ cohort.T], [probe @ cohort.T], 5)[0]
    assert z.inputs.score[trial] == pytest.approx(expected)
    model = {"name": "m", "weights_sha256": "0" * 64, "dimension": 32}
    floor = (et.MIN_SELF_SPEAKERS, et.MIN_SELF_VOICEPRINTS)
    et.MIN_SELF_SPEAKERS = 3
    try:
        fitted = et.fit_self_calibration(z, model=model, prior=None, p_fit=0.01, form="asnorm")
    finally:
        et.MIN_SELF_SPEAKERS, et.MIN_SELF_VOICEPRINTS = floor
    assert fitted.score == "asnorm" and fitted.features == ("score",)
    assert fitted.weights[0] > 0  # higher z, more likely the same speaker


def test_trials_record_the_voiceprint_sides_speaker():
    rng = np.random.default_rng(7)
    v, s, sec, bw = _synthetic(rng, [3, 3, 2, 1])
    trials = et.build_trials(v, s, sec, bw)
    assert trials.prints is not None
    same = trials.labels == 1
    assert np.array_equal(trials.prints[same], trials.groups[same])
    assert not np.any(trials.prints[~same] == trials.groups[~same])
    # every recording meets every other speaker's voiceprint once: the pairs say so
    pairs = sorted(zip(trials.groups[~same].tolist(), trials.prints[~same].tolist(), strict=True))
    recordings = (3, 3, 2, 1)
    expected = sorted(
        (a, b) for a in range(4) for _ in range(recordings[a]) for b in range(4) if b != a
    )
    assert pairs == expected


def _prior_of(trials, scale):
    """A calibration whose LLRs are ``scale`` times those of a fit on the trials themselves."""
    model = {"name": "m", "weights_sha256": "0" * 64, "dimension": 32}
    own = cal.fit_calibration(trials.inputs, trials.labels, model=model, groups=trials.groups)
    return own, cal.Calibration(
        own.model,
        own.features,
        tuple(scale * w for w in own.weights),
        scale * own.bias,
        own.input_ranges,
        own.far_thresholds,
        own.fit,
    )


def test_validated_weight_trusts_the_fit_where_the_prior_is_wrong():
    """Speaker-held-out validation inside the database: a prior three times too flat (as the
    bundled calibration is on a phone line) gets a larger weight on the fit than a prior that
    is right; the weight stays within the cap n / (n + k)."""
    rng = np.random.default_rng(8)
    trials = et.build_trials(*_synthetic(rng, [3] * 8 + [1] * 4, spread=0.9))
    right, flat = _prior_of(trials, 1.0)[0], _prior_of(trials, 1.0 / 3.0)[1]
    weights = {}
    for name, prior in (("right", right), ("flat", flat)):
        weights[name] = validated_weight(
            prior.llrs(trials.inputs), trials.labels, trials.groups, trials.prints, 0.01
        )
    assert weights["flat"] >= 0.5 > weights["right"]
    model = {"name": "m", "weights_sha256": "0" * 64, "dimension": 32}
    for k, cap in ((0.0, 1.0), (30.0, 8 / 38)):
        fitted = et.fit_self_calibration(
            trials, model=model, prior=flat, p_fit=0.01, shrink_speakers=k, validate=True
        )
        lam = min(cap, weights["flat"])
        assert f"weight {lam:.2f} on the fit" in fitted.fit.note
        assert "speaker-held-out validation" in fitted.fit.note
    fixed = et.fit_self_calibration(trials, model=model, prior=flat, p_fit=0.01, validate=False)
    assert "validation" not in fixed.fit.note and "n / (n + 30)" in fixed.fit.note


def test_validated_weight_without_a_fold_to_score_keeps_the_prior():
    rng = np.random.default_rng(9)
    trials = et.build_trials(*_synthetic(rng, [2, 1]))  # one speaker with targets
    prior = _prior_of(et.build_trials(*_synthetic(rng, [3] * 6)), 1.0)[0]
    llr = prior.llrs(trials.inputs)
    assert validated_weight(llr, trials.labels, trials.groups, trials.prints, 0.01) == 0.0


# --- real speech, through the database -------------------------------------------------------


@pytest.fixture(scope="module")
def phone_recordings(model):
    """9 phone-line speakers x 4 recordings and 3 wideband single voices, embedded once:
    name -> [(NewUtterance, path)]."""
    require_data()
    groups = by_speaker("telephone")
    singles = [p for p, _ in manifest("librispeech", "singles.jsonl")[:3]]
    plan = {name: paths[:4] for name, paths in sorted(groups.items())}
    plan |= {f"single{i}": [p] for i, p in enumerate(singles)}
    flat = [(name, p) for name, paths in plan.items() for p in paths]
    embedded = model.embed([str(p) for _, p in flat])
    out: dict[str, list[tuple[NewUtterance, str]]] = {}
    for (name, path), e in zip(flat, embedded, strict=True):
        assert e.vector is not None, e.error
        utterance = NewUtterance(
            e.vector, e.sha256, str(path), e.duration, e.speech_seconds, e.bandwidth_hz
        )
        out.setdefault(name, []).append((utterance, str(path)))
    return out


def _fill(url, model, recordings, names, per_speaker=3):
    with SpeakerDB.open(url, model=model) as db:
        for name in names:
            rows = [u for u, _ in recordings[name][:per_speaker]]
            db.store.enroll(EnrollRequest(name, rows), model.identity)


def _phone_names(recordings):
    return [n for n in recordings if not n.startswith("single")]


def run(*args, db):
    return CliRunner().invoke(cli, [*args, "--db", db], catch_exceptions=False)


def run_json(*args, db):
    result = run(*args, "--json", db=db)
    assert result.stdout, result.output
    return result.exit_code, json.loads(result.stdout)


def test_too_small_a_database_refuses(db_url, model, phone_recordings):
    _fill(db_url, model, phone_recordings, _phone_names(phone_recordings)[:4])
    result = CliRunner().invoke(cli, ["calibrate", "--from-enrollments", "--db", db_url])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: too few enrollments to self-calibrate: 4 speakers")
    assert "(need 5)" in result.stderr and "Traceback" not in result.output
    with SpeakerDB.open(db_url, model=model) as db:
        with pytest.raises(UsageError, match="need 10"):
            db.calibrate_from_enrollments()
        info = db.calibration_info()
    assert info["calibration"] == "bundled" and info["stored"] is None  # nothing changed
    assert info["self_calibration"]["enough"] is False


def test_self_calibration_decides_and_is_named(db_url, model, phone_recordings):
    names = list(phone_recordings)
    _fill(db_url, model, phone_recordings, names)
    probe_speaker = _phone_names(phone_recordings)[0]
    probe = phone_recordings[probe_speaker][3][1]  # not enrolled
    code, before = run_json("verify", probe_speaker, probe, db=db_url)
    assert before["calibration"] == "bundled"

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    code, fitted = run_json("calibrate", "--from-enrollments", db=db_url)
    assert code == 0 and fitted["calibrated"] is True
    rule = fitted["decision_rule"]
    assert rule["calibration"] == "self" and rule["fitted"]
    assert fitted["evaluation"]["target_trials"] == 9 * 3  # 9 speakers x 3 recordings
    created = fitted["calibration"]["fit"]["created"]
    assert created >= started  # this fit's date, not the bundled calibration's
    # the note says how far the fit moved from the bundled calibration, and why
    assert "weight 0.23 on the fit" in fitted["calibration"]["fit"]["note"]
    assert "(n / (n + 30))" in fitted["calibration"]["fit"]["note"]
    assert rule["fitted"] == created and f"self calibration fitted {created}" in rule["text"]

    code, after = run_json("verify", probe_speaker, probe, db=db_url)
    assert after["decision_rule"]["calibration"] == "self"
    assert after["decision_rule"]["fitted"] == created
    assert after["cosine"] == pytest.approx(before["cosine"])
    # the same trial, another calibration: the LLR moved (phone speech is what the bundled
    # calibration is under-confident on)
    assert after["llr"] > before["llr"]
    code, found = run_json("identify", probe, db=db_url)
    assert found["decision_rule"]["calibration"] == "self"

    shown = run("calibrate", "--show", db=db_url)
    assert shown.exit_code == 0
    assert f"self calibration fitted {created}" in shown.stdout
    assert "-> enough" in shown.stdout and "auto off" in shown.stdout
    code, info = run_json("calibrate", "--show", db=db_url)
    assert info["calibration"] == "self" and info["self_calibration"]["enough"] is True
    assert info["self_calibration"]["fitted_on"]["speakers"] == len(names)

    with SpeakerDB.open(db_url, model=model) as db:  # Python, same store
        assert db.decision_policy().rule.calibration == "self"
        rule_now = db.reset_calibration()
    assert rule_now.calibration == "bundled"


def test_asnorm_self_calibration_stored_and_used(db_url, model, phone_recordings):
    names = list(phone_recordings)  # 9 phone speakers + 3 singles: a cohort of 10 per trial
    _fill(db_url, model, phone_recordings, names[:-1])
    result = CliRunner().invoke(
        cli, ["calibrate", "--from-enrollments", "--norm", "asnorm", "--db", db_url]
    )
    assert result.exit_code == 2 and "need 12" in result.stderr
    _fill(db_url, model, phone_recordings, names[-1:])
    code, fitted = run_json("calibrate", "--from-enrollments", "--norm", "asnorm", db=db_url)
    assert code == 0 and fitted["normalization"] == "asnorm"
    assert fitted["decision_rule"]["calibration"] == "self"
    probe_speaker = _phone_names(phone_recordings)[0]
    probe = phone_recordings[probe_speaker][3][1]
    code, answer = run_json("verify", probe_speaker, probe, "--norm", "asnorm", db=db_url)
    assert answer["decision_rule"]["calibration"] == "self"
    assert answer["decision_rule"]["fitted"] == fitted["calibration"]["fit"]["created"]
    code, plain = run_json("verify", probe_speaker, probe, db=db_url)
    assert plain["decision_rule"]["calibration"] == "bundled"  # raw cosines: untouched


def test_auto_mode_fits_when_enough_and_refits_after_a_deletion(db_url, model, phone_recordings):
    names = list(phone_recordings)
    _fill(db_url, model, phone_recordings, names[:6])
    code, doc = run_json("calibrate", "--from-enrollments", "--auto", db=db_url)
    assert code == 0 and doc["auto"] is True and doc["calibrated"] is False
    assert doc["decision_rule"]["calibration"] == "bundled"

    with SpeakerDB.open(db_url, model=model) as db:
        assert db.decision_policy().rule.calibration == "bundled"  # 6 speakers: not yet
        for name in names[6:]:
            rows = [u for u, _ in phone_recordings[name][:3]]
            db.store.enroll(EnrollRequest(name, rows), model.identity)
        first = db.decision_policy().rule  # the start of a decision fits
        assert first.calibration == "self" and first.fitted
        info = db.calibration_info()
        assert info["self_calibration"]["auto"] is True
        assert info["self_calibration"]["fitted_on"]["speakers"] == len(names)
        again = db.decision_policy().rule  # nothing changed: no re-fit
        assert again == first
        db.delete(names[0])
        db.decision_policy()
        refit = db.calibration_info()
    assert refit["decision_rule"]["fitted"] > first.fitted  # a new fit, a new date
    assert refit["calibration"] == "self"
    assert refit["self_calibration"]["fitted_on"]["speakers"] == len(names) - 1
    assert refit["fit"]["target_trials"] < info["fit"]["target_trials"]

    probe_speaker = _phone_names(phone_recordings)[1]
    probe = phone_recordings[probe_speaker][3][1]
    code, answer = run_json("verify", probe_speaker, probe, db=db_url)
    assert answer["decision_rule"]["calibration"] == "self"
    assert answer["decision_rule"]["fitted"] == refit["fit"]["created"]

    with SpeakerDB.open(db_url, model=model) as db:  # another operating point, still auto
        moved = db.set_operating_point(prior=0.05)
        assert moved.calibration == "self" and moved.p_target == 0.05
        assert moved.fitted == refit["fit"]["created"]  # the same fit: nothing re-fitted
        assert db.calibration_info()["self_calibration"]["auto"] is True
        assert db.decision_policy().rule == moved

    code, off = run_json("calibrate", "--reset", db=db_url)
    assert code == 0 and off["decision_rule"]["calibration"] == "bundled"
    with SpeakerDB.open(db_url, model=model) as db:
        assert db.calibration_info()["self_calibration"]["auto"] is False
        assert db.decision_policy().rule.calibration == "bundled"


# --- naming in diarization --------------------------------------------------------------------


@pytest.fixture(scope="module")
def phone_conversation_db(model, tmp_path_factory):
    """An SQLite database of the 8 kHz conversations' known speakers (their enrollment
    recordings, 3 each) and 3 other voices, and one of the conversations."""
    base = require_data() / "conversations-8k"
    rows = [json.loads(line) for line in (base / "enroll.jsonl").read_text().splitlines()]
    files = [(r["label"], (base / r["audio_filepath"]).resolve()) for r in rows]
    files += [
        (f"single{i}", p) for i, (p, _) in enumerate(manifest("librispeech", "singles.jsonl")[:3])
    ]
    embedded = model.embed([str(p) for _, p in files])
    url = f"sqlite:///{tmp_path_factory.mktemp('naming') / 'naming.sqlite'}"
    by_name: dict[str, list[NewUtterance]] = {}
    for (name, path), e in zip(files, embedded, strict=True):
        assert e.vector is not None, e.error
        by_name.setdefault(name, []).append(
            NewUtterance(
                e.vector, e.sha256, str(path), e.duration, e.speech_seconds, e.bandwidth_hz
            )
        )
    with SpeakerDB.open(url, model=model) as db:
        for name, utterances in by_name.items():
            db.store.enroll(EnrollRequest(name, utterances), model.identity)
    return url, base / "conv00.wav"


def test_naming_in_diarization_uses_the_self_calibration(model, phone_conversation_db):
    url, conversation = phone_conversation_db
    with SpeakerDB.open(url, model=model) as db:
        before = db.diarize(conversation)
        db.calibrate_from_enrollments()
        after = db.diarize(conversation)
        policy = db.decision_policy()
    assert before.decision_rule is not None and before.decision_rule.calibration == "bundled"
    assert after.decision_rule is not None and after.decision_rule.calibration == "self"
    assert after.decision_rule.fitted == policy.calibration.fit.created
    for old, new in zip(before.speakers, after.speakers, strict=True):
        # the same voices and candidates; each candidate's LLR is now the self-calibration's
        assert [m.name for m in old.matches] == [m.name for m in new.matches]
        for a, b in zip(old.matches, new.matches, strict=True):
            assert a.cosine == pytest.approx(b.cosine)
            assert b.llr != pytest.approx(a.llr, abs=1e-3)
            assert b.accepted == (b.llr >= after.decision_rule.threshold)
