"""Calibrated decisions through the database: every answer carries the raw cosine, the LLR,
the score used, the threshold and the rule; the operating point (--prior, --far,
--threshold); calibrate fits, stores, moves and resets; eval reports the LLR figures; the
quality measures are stored and kept in step. SQLite and PostgreSQL, CLI and Python."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import by_speaker, fake_model, fake_utterance, manifest, require_data
from helpers import trials as labelled_trials
from speakerdb import SpeakerDB, scoring
from speakerdb import _calibration as cal
from speakerdb._quality import speech_bandwidth_hz
from speakerdb.cli import cli
from speakerdb.enroll._lists import read_trials
from speakerdb.errors import UsageError
from speakerdb.storage._check import check_store
from speakerdb.storage._records import EnrollRequest, NewUtterance
from speakerdb.storage._store import EnrollmentStore

LN99 = math.log(99)


def run(*args: str, db: str | None = None):
    argv = list(args) + (["--db", db] if db else [])
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def run_json(*args: str, db: str | None = None):
    result = run(*args, "--json", db=db)
    assert result.stdout, result.output
    return result.exit_code, json.loads(result.stdout)


def bundled(model):
    identity = model.identity
    found = cal.bundled_calibration(identity.name, identity.weights_sha256, identity.dimension)
    assert found is not None
    return found


def expected(model, calibration, probe, enrolled):
    """(cosine, llr) of ``probe`` against a voiceprint of ``enrolled`` files, computed here
    from the model's embeddings and quality measures, not through the database."""
    p = model.embed([probe])[0]
    es = model.embed(list(enrolled))
    mean = np.mean([e.vector.astype(np.float64) for e in es], axis=0)
    centroid = (mean / np.linalg.norm(mean)).astype(np.float32)
    score = scoring.cosine(p.vector, centroid)
    side = cal.enrollment_quality([e.speech_seconds for e in es], [e.bandwidth_hz for e in es])
    llr = calibration.llr(
        score, p.speech_seconds, side.speech_seconds, side.count, p.bandwidth_hz, side.bandwidth_hz
    )
    return score, llr


@pytest.fixture
def groups():
    require_data()
    return {**by_speaker("vctk"), **by_speaker("librispeech")}


@pytest.fixture
def enrolled(db_url, groups):
    for name in ("p225", "p226", "1688"):
        files = [str(p) for p in groups[name][:3]]
        assert run("enroll", name, *files, db=db_url).exit_code == 0
    return db_url


# --- every answer ---------------------------------------------------------------------------


def test_a_new_database_decides_on_llrs_of_the_bundled_calibration(enrolled, groups, model):
    db = enrolled
    calibration = bundled(model)
    genuine, impostor = str(groups["p225"][5]), str(groups["p226"][5])
    code, docs = run_json("verify", "p225", genuine, impostor, db=db)
    assert code == 1 and [d["accepted"] for d in docs] == [True, False]
    for doc, probe in zip(docs, (genuine, impostor), strict=True):
        cosine, llr = expected(model, calibration, probe, [str(p) for p in groups["p225"][:3]])
        assert doc["cosine"] == pytest.approx(cosine, abs=1e-6)
        assert doc["llr"] == pytest.approx(llr, abs=1e-4) and doc["score"] == doc["llr"]
        assert doc["threshold"] == pytest.approx(LN99) and doc["calibration"] == "bundled"
        assert doc["accepted"] == (doc["llr"] >= doc["threshold"])
        rule = doc["decision_rule"]
        assert rule | {"threshold": None, "text": None} == {
            "score": "llr",
            "threshold": None,
            "origin": "operating_point",
            "calibration": "bundled",
            "p_target": 0.01,
            "c_miss": 1.0,
            "c_fa": 1.0,
            "far": None,
            "note": None,
            "fitted": None,
            "text": None,
        }
        assert rule["text"].startswith("llr >= 4.595 (p_target=0.01, c_miss=1, c_fa=1")
        assert set(doc) >= {"score", "threshold", "accepted", "speaker", "model"}

    # compare: each file is the other's enrollment side (symmetric features).
    a, b = str(groups["p226"][6]), str(groups["p226"][7])
    code, doc = run_json("compare", a, b, db=db)
    cosine, llr = expected(model, calibration, b, [a])
    assert code == 0 and doc["same_speaker"] is True
    assert doc["llr"] == pytest.approx(llr, abs=1e-4) and doc["cosine"] == pytest.approx(cosine)
    assert doc["decision_rule"]["score"] == "llr" and doc["calibration"] == "bundled"

    # identify: candidates ranked and decided on their LLRs.
    code, doc = run_json("identify", str(groups["1688"][6]), "--top-k", "3", db=db)
    assert code == 0 and doc["best"] == "1688" and doc["decision_rule"]["score"] == "llr"
    llrs = [m["llr"] for m in doc["matches"]]
    assert llrs == sorted(llrs, reverse=True) and [m["score"] for m in doc["matches"]] == llrs
    assert doc["score"] == doc["llr"] == llrs[0] and doc["cosine"] == doc["matches"][0]["cosine"]
    for m in doc["matches"]:
        files = [str(p) for p in groups[m["name"]][:3]]
        assert m["llr"] == pytest.approx(
            expected(model, calibration, str(groups["1688"][6]), files)[1], abs=1e-4
        )
    unknown = str(groups["p227"][0])
    code, doc = run_json("identify", unknown, db=db)
    assert code == 1 and doc["best"] is None and doc["llr"] < doc["threshold"]

    # Python: the same answers, the same fields.
    with SpeakerDB.open(db, device="cpu", read_only=True) as sdb:
        v = sdb.verify("p225", genuine)
        c = sdb.compare(a, b)
        i = sdb.identify(str(groups["1688"][6]), top_k=3)
    assert v.to_dict() == run_json("verify", "p225", genuine, db=db)[1]
    assert c.llr == pytest.approx(llr) and c.decision_rule.text == doc["decision_rule"]["text"]
    assert i.best == "1688" and i.llr is not None and i.matches[0].llr == i.llr


def test_prior_far_and_threshold_move_the_decision(enrolled, groups, model):
    db = enrolled
    calibration = bundled(model)
    probe = str(groups["p225"][5])
    code, base = run_json("verify", "p225", probe, db=db)
    code, doc = run_json("verify", "p225", probe, "--prior", "0.5", db=db)
    assert doc["threshold"] == pytest.approx(0.0) and doc["decision_rule"]["p_target"] == 0.5
    assert doc["llr"] == pytest.approx(base["llr"])
    code, doc = run_json("verify", "p225", probe, "--far", "0.01", db=db)
    assert doc["threshold"] == pytest.approx(calibration.threshold_at_far(0.01))
    assert doc["decision_rule"]["origin"] == "target_far" and doc["decision_rule"]["far"] == 0.01
    # --threshold: on the LLR scale of the rule in use, above this probe's LLR -> rejected.
    above = f"{base['llr'] + 1:.3f}"
    code, doc = run_json("verify", "p225", probe, "--threshold", above, db=db)
    assert code == 1 and doc["accepted"] is False and doc["decision_rule"]["origin"] == "given"
    code, doc = run_json("compare", probe, str(groups["p225"][6]), "--prior", "0.001", db=db)
    assert doc["threshold"] == pytest.approx(math.log(999))
    code, doc = run_json("identify", probe, "--far", "0.1", db=db)
    assert doc["threshold"] == pytest.approx(calibration.threshold_at_far(0.1))
    assert run("verify", "p225", probe, "--prior", "0.01", "--far", "0.01", db=db).exit_code == 2


# --- calibrate ------------------------------------------------------------------------------


def test_calibrate_fits_stores_moves_and_resets(enrolled, groups, model):
    db = enrolled
    trials = require_data() / "vctk" / "trials.txt"
    code, doc = run_json("calibrate", str(trials), db=db)
    assert code == 0 and doc["kind"] == "llr" and doc["calibrated"] is True
    stored = cal.Calibration.from_dict(doc["calibration"])
    digest = hashlib.sha256(trials.read_bytes()).hexdigest()
    assert stored.fit.trials_sha256 == digest
    assert (stored.fit.target_trials, stored.fit.nontarget_trials) == (180, 600)

    # The fit is the one made here from the trials' own embeddings and quality measures.
    rows = read_trials(trials, require_labels=True)
    files = sorted({str(p) for t in rows for p in (t.a, t.b)})
    embedded = dict(zip(files, model.embed(files), strict=True))
    a = [embedded[str(t.a)] for t in rows]
    b = [embedded[str(t.b)] for t in rows]
    inputs = cal.TrialQuality.of(
        [scoring.cosine(x.vector, y.vector) for x, y in zip(a, b, strict=True)],
        [y.speech_seconds for y in b],
        [x.speech_seconds for x in a],
        1,
        [y.bandwidth_hz for y in b],
        [x.bandwidth_hz for x in a],
    )
    mine = cal.fit_calibration(inputs, [t.label for t in rows], model=stored.model)
    assert np.allclose(stored.weights, mine.weights, rtol=1e-6, atol=1e-9)
    assert stored.bias == pytest.approx(mine.bias, abs=1e-6)

    code, info = run_json("calibrate", "--show", db=db)
    assert info["calibration"] == "database" and info["stored"]["kind"] == "llr"
    assert info["stored"]["trials_sha256"] == digest and info["stored"]["target_trials"] == 180
    assert info["fit"]["created"] == stored.fit.created
    probe = str(groups["p225"][5])
    code, v = run_json("verify", "p225", probe, db=db)
    _, llr = expected(model, stored, probe, [str(p) for p in groups["p225"][:3]])
    assert v["calibration"] == "database" and v["llr"] == pytest.approx(llr, abs=1e-4)
    assert v["threshold"] == pytest.approx(LN99)

    # The operating point moves and is stored; --threshold still overrides per call.
    code, moved = run_json("calibrate", "--prior", "0.1", db=db)
    assert moved["threshold"] == pytest.approx(math.log(9))
    code, v = run_json("verify", "p225", probe, db=db)
    assert v["threshold"] == pytest.approx(math.log(9)) and v["calibration"] == "database"
    code, moved = run_json("calibrate", "--far", "0.01", db=db)
    assert moved["threshold"] == pytest.approx(stored.threshold_at_far(0.01))
    assert run("calibrate", "--far", "0.001", db=db).exit_code == 2  # 600 impostors: too few

    code, reset = run_json("calibrate", "--reset", db=db)
    assert reset["decision_rule"]["calibration"] == "bundled"
    code, v = run_json("verify", "p225", probe, db=db)
    assert v["calibration"] == "bundled" and v["threshold"] == pytest.approx(LN99)


def test_calibrate_in_python_and_too_few_trials(tmp_path, groups):
    base = require_data() / "vctk"
    rows = read_trials(base / "trials.txt", require_labels=True)
    with SpeakerDB.open(tmp_path / "py.sqlite", device="cpu") as db:
        few = [t for t in rows if t.label == 1][:40] + [t for t in rows if t.label == 0][:300]
        with pytest.raises(UsageError, match="too few trials"):
            db.calibrate(few)
        assert db.calibration_info()["stored"] is None
        result = db.calibrate(rows, prior=0.05)
        assert result.kind == "llr" and result.calibration is not None
        assert result.calibration.fit.p_fit == 0.05
        assert result.rule.threshold == pytest.approx(math.log(19))
        assert result.report.calibrated is not None and result.report.calibration == "database"
        from speakerdb.enroll._evaluation import trials_digest

        assert result.calibration.fit.trials_sha256 == trials_digest(rows)
        c = db.compare(groups["p225"][3], groups["p225"][4])
        assert c.calibration == "database" and c.threshold == pytest.approx(math.log(19))
    result = run("calibrate", "--bundled", "--norm", "asnorm", db=str(tmp_path / "py.sqlite"))
    assert result.exit_code == 2 and "AS-norm" in result.stderr


def test_score_rule_threshold_and_asnorm_calibration(tmp_path, groups):
    data = require_data()
    db = str(tmp_path / "n.sqlite")
    trials = str(data / "vctk" / "trials.txt")
    # A small impostor cohort (each CLI call embeds it again).
    cohort = str(tmp_path / "cohort.jsonl")
    singles = manifest("librispeech", "singles.jsonl")[:20]
    with open(cohort, "w") as out:
        for path, label in singles:
            out.write(json.dumps({"audio_filepath": str(path), "label": label}) + "\n")
    # --rule score keeps the old kind: a cosine threshold, no calibration.
    code, doc = run_json("calibrate", trials, "--rule", "score", "--target", "eer", db=db)
    assert doc["kind"] == "threshold" and doc["calibration"] is None
    a, b = str(groups["p225"][3]), str(groups["p226"][3])
    code, c = run_json("compare", a, b, db=db)
    assert c["llr"] is None and c["score"] == c["cosine"]
    assert c["decision_rule"]["score"] == "cosine" and c["decision_rule"]["origin"] == "database"
    assert c["threshold"] == pytest.approx(doc["threshold"])
    # AS-norm: its own calibration of z-scores; before it, the z-score rule (model's 4.33).
    code, z = run_json("compare", a, b, "--norm", "asnorm", "--cohort", cohort, db=db)
    assert z["decision_rule"]["score"] == "asnorm" and z["llr"] is None
    assert z["threshold"] == pytest.approx(4.33) and z["score"] != z["cosine"]
    code, doc = run_json("calibrate", trials, "--norm", "asnorm", "--cohort", cohort, db=db)
    assert code == 0 and doc["calibration"]["score"] == "asnorm"
    code, n = run_json("compare", a, b, "--norm", "asnorm", "--cohort", cohort, db=db)
    assert n["calibration"] == "database" and n["llr"] is not None and n["score"] == n["llr"]
    assert n["normalization"] == "asnorm" and n["cosine"] == pytest.approx(c["cosine"])
    code, c2 = run_json("compare", a, b, db=db)  # raw cosines: still the threshold
    assert c2["decision_rule"] == c["decision_rule"]


# --- eval -----------------------------------------------------------------------------------


def test_eval_reports_the_llr_figures_of_the_rule_in_use(tmp_path, model):
    trials = require_data() / "vctk" / "trials.txt"
    code, doc = run_json("eval", str(trials), db=str(tmp_path / "e.sqlite"))
    assert code == 0 and doc["decision_rule"]["score"] == "llr"
    figures = doc["calibrated"]
    rows = read_trials(trials, require_labels=True)
    files = sorted({str(p) for t in rows for p in (t.a, t.b)})
    embedded = dict(zip(files, model.embed(files), strict=True))
    calibration = bundled(model)
    llr = np.array(
        [
            calibration.llr(
                scoring.cosine(embedded[str(t.a)].vector, embedded[str(t.b)].vector),
                embedded[str(t.b)].speech_seconds,
                embedded[str(t.a)].speech_seconds,
                1,
                embedded[str(t.b)].bandwidth_hz,
                embedded[str(t.a)].bandwidth_hz,
            )
            for t in rows
        ]
    )
    labels = np.array([t.label for t in rows])
    tgt, non = llr[labels == 1], llr[labels == 0]
    assert figures["cllr"] == pytest.approx(scoring.cllr(tgt, non), abs=1e-4)
    assert figures["min_cllr"] == pytest.approx(scoring.min_cllr(tgt, non), abs=1e-4)
    assert figures["act_dcf"] == pytest.approx(scoring.act_dcf(tgt, non), abs=1e-9)
    assert figures["min_dcf"] == pytest.approx(scoring.min_dcf(tgt, non)[0], abs=1e-9)
    assert doc["frr_at_threshold_in_use"] == pytest.approx(np.mean(tgt < LN99))
    assert doc["far_at_threshold_in_use"] == pytest.approx(np.mean(non >= LN99))
    assert doc["threshold_in_use"] == pytest.approx(LN99)
    text = run("eval", str(trials), "--prior", "0.05", db=str(tmp_path / "e.sqlite")).stdout
    assert "Cllr" in text and "llr >= 2.944 (p_target=0.05" in text


# --- the quality measures in the store ------------------------------------------------------


def test_bandwidth_is_measured_on_the_decoded_audio(model):
    from speakerdb.model._audio import load_audio

    for name in ("vctk", "telephone"):
        path = manifest(name)[0][0]
        embedded = model.embed([path])[0]
        assert embedded.bandwidth_hz == speech_bandwidth_hz(load_audio(path).samples, 16000)
    assert model.embed([manifest("telephone")[0][0]])[0].bandwidth_hz < 4000


def test_every_door_gives_one_answer_to_same_speaker(model):
    """load_model().compare(a, b), SpeakerDB.compare and `speakerdb compare a b` (no
    database) decide by one rule, the bundled calibration, with byte-identical answers;
    verify_speakers follows without a threshold (docs/decisions.md: the model door changed)."""
    pairs = []
    for name in ("vctk", "telephone"):
        rows = labelled_trials(name)
        for label in (1, 0):  # genuine and impostor pairs of each set, wideband and phone line
            pairs += [(str(a), str(b)) for lab, a, b in rows if lab == label][:4]
    answers = [model.compare(a, b) for a, b in pairs]
    assert {c.same_speaker for c in answers} == {True, False}
    with SpeakerDB.open(None, missing_ok=True, read_only=True) as db:
        for (a, b), mine in zip(pairs, answers, strict=True):
            assert (
                mine.decision_rule.text
                == f"llr >= {LN99:.4g} (p_target=0.01, c_miss=1, c_fa=1; bundled calibration)"
            )
            assert mine.to_dict() == db.compare(a, b).to_dict()
            code, doc = run_json("compare", a, b)
            assert doc == mine.to_dict() and code == (0 if mine.same_speaker else 1)
    batch = model.verify_speakers_batch(pairs).tolist()
    assert batch == [c.same_speaker for c in answers]
    assert model.verify_speakers(*pairs[0]) is answers[0].same_speaker
    # A threshold is on the rule's scale at every door: an LLR here.
    a, b = pairs[0]
    given = model.compare(a, b, threshold=answers[0].score + 1.0)
    assert given.same_speaker is False and given.decision_rule.origin == "given"
    code, doc = run_json("compare", a, b, "--threshold", repr(answers[0].score + 1.0))
    assert doc == given.to_dict() and code == 1


def test_speaker_bandwidth_follows_its_recordings(db_url):
    rng = np.random.default_rng(3)
    identity = fake_model()

    def utterance(seconds, bandwidth):
        u = fake_utterance(rng)
        return NewUtterance(u.embedding, u.sha256, u.source, 3.0, seconds, bandwidth)

    with EnrollmentStore.open(db_url) as store:
        store.enroll(EnrollRequest("a", [utterance(2.0, 8000.0), utterance(6.0, 4000.0)]), identity)
        assert store.speaker("a").bandwidth_hz == pytest.approx(5000.0)
        assert [u.bandwidth_hz for u in store.utterances("a")] == [8000.0, 4000.0]
        store.enroll(EnrollRequest("a", [utterance(2.0, None)]), identity)
        assert store.speaker("a").bandwidth_hz is None  # one recording's is unknown
        store.enroll(EnrollRequest("a", [utterance(1.0, 3000.0)], "overwrite"), identity)
        assert store.speaker("a").bandwidth_hz == pytest.approx(3000.0)
        with pytest.raises(UsageError):
            store.enroll(EnrollRequest("b", [utterance(1.0, -1.0)]), identity)
        assert check_store(store).consistent
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE speakers SET bandwidth_hz = 1234.0")
        assert "bandwidths out of date" in " ".join(check_store(store).problems)


def test_a_new_database_defaults_to_the_bundled_calibration(db_url):
    from speakerdb.storage._migrate import upgrade_database

    upgrade_database(db_url)  # created by `db upgrade`
    with EnrollmentStore.open(db_url) as store:
        assert store.calibration_setting() == ("bundled", None)


@settings(max_examples=300, deadline=None)
@given(
    prior=st.none() | st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True),
    far=st.none() | st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True),
    threshold=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    normalization=st.sampled_from([None, "asnorm"]),
)
def test_any_operating_point_gives_a_policy_or_a_usage_error(prior, far, threshold, normalization):
    """Whatever numbers a caller (or an HTTP client) sends, the policy is made or refused with
    a UsageError: never another exception (a subnormal --far once overflowed into a 500)."""
    from speakerdb.decisions import DecisionOptions, resolve_policy
    from speakerdb.model._registry import model_identity

    try:
        options = DecisionOptions.of(threshold, prior=prior, far=far, norm=normalization)
        policy = resolve_policy(model_identity(), options)
    except UsageError:
        return
    assert math.isfinite(policy.rule.threshold)


def test_decision_options_are_one_value_checked_once(tmp_path):
    """The options are validated where they are made, whichever door: the Python value, the
    CLI (before any database is opened) and a verb given both the value and keywords."""
    import dataclasses

    from speakerdb.decisions import DecisionOptions, Scale

    with pytest.raises(UsageError, match="not both"):
        DecisionOptions(prior=0.1, far=0.01)
    options = DecisionOptions.of(0.5, norm="asnorm", cohort=["a.wav"])
    assert options.norm is Scale.ASNORM and options.normalization == "asnorm"
    assert options.cohort == ("a.wav",) and options.norm.stored == "asnorm"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threshold = 0.6  # type: ignore[misc]
    # One spelling of "no normalisation": None and "none" read as the cosine scale.
    assert Scale.of_norm(None) is Scale.of_norm("none") is Scale.COSINE
    assert Scale.COSINE.normalization is None and Scale.COSINE.stored == "none"
    for wrong in ("cosine", "llr", "znorm"):
        with pytest.raises(UsageError, match="normalisation must be one of none, asnorm"):
            Scale.of_norm(wrong)
    with pytest.raises(UsageError):
        DecisionOptions(norm=Scale.LLR)
    missing = str(tmp_path / "never-made.sqlite")
    result = run("verify", "p225", "x.wav", "--prior", "0.1", "--far", "0.01", db=missing)
    assert result.exit_code == 2
    assert "give a prior or a target false-accept rate, not both" in result.stderr
    assert not (tmp_path / "never-made.sqlite").exists()
    with (
        SpeakerDB.open(None, missing_ok=True, read_only=True) as db,
        pytest.raises(UsageError, match="not both"),
    ):
        db.compare("a.wav", "b.wav", threshold=1.0, options=DecisionOptions(prior=0.1))
