"""Naming in diarization with the database's own calibration of AS-norm scores (SQLite and
PostgreSQL, real 8 kHz conversation): without one, voices are decided on raw cosines by the
database's rule; once the database has fitted one, ``diarize`` uses it by default at the
naming operating point (:data:`NAMING_PRIOR`, or a stricter stored one), and says so in
every voice's decision rule (Python and ``speakerdb diarize``); ``--norm none`` keeps raw
cosines."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from helpers import manifest, require_data
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.enroll._diarize_verb import NAMING_PRIOR
from speakerdb.storage._records import EnrollRequest, NewUtterance


@pytest.fixture(scope="module")
def phone_voices(model):
    """The 8 kHz conversations' known speakers (their 3 enrollment recordings each) and 5
    single voices (12 speakers: enough for a self-calibration of AS-norm scores), embedded
    once; and one conversation with its known speakers."""
    base = require_data() / "conversations-8k"
    rows = [json.loads(line) for line in (base / "enroll.jsonl").read_text().splitlines()]
    files = [(r["label"], (base / r["audio_filepath"]).resolve()) for r in rows]
    files += [
        (f"single{i}", p) for i, (p, _) in enumerate(manifest("librispeech", "singles.jsonl")[:5])
    ]
    embedded = model.embed([str(p) for _, p in files])
    by_name: dict[str, list[NewUtterance]] = {}
    for (name, path), e in zip(files, embedded, strict=True):
        assert e.vector is not None, e.error
        by_name.setdefault(name, []).append(
            NewUtterance(
                e.vector, e.sha256, str(path), e.duration, e.speech_seconds, e.bandwidth_hz
            )
        )
    conversation = json.loads((base / "manifest.jsonl").read_text().splitlines()[10])
    return by_name, base / conversation["audio_filepath"], set(conversation["known"])


def _decided_by_its_rule(result, threshold):
    for speaker in result.speakers:
        assert speaker.decision_rule is not None
        assert speaker.decision_rule.threshold == pytest.approx(threshold)
        for match in speaker.matches:
            assert match.accepted == (match.score >= threshold)
        if speaker.name is not None:
            assert speaker.score is not None and speaker.score >= threshold


def test_naming_uses_the_asnorm_self_calibration_at_the_naming_prior(db_url, model, phone_voices):
    by_name, conversation, known = phone_voices
    with SpeakerDB.open(db_url, model=model) as db:
        for name, utterances in by_name.items():
            db.store.enroll(EnrollRequest(name, utterances), model.identity)
        before = db.diarize(conversation)
        db.calibrate_from_enrollments(norm="asnorm")
        after = db.diarize(conversation)
    # The command line: --norm none keeps raw cosines.
    raw = _cli_json("diarize", str(conversation), "--norm", "none", db=db_url)
    with SpeakerDB.open(db_url, model=model) as db:
        stricter = db.set_operating_point("asnorm", prior=NAMING_PRIOR / 10)
    strict = _cli_json("diarize", str(conversation), db=db_url)  # --norm auto

    # Without a calibration of AS-norm scores: raw cosines, the database's rule.
    assert before.decision_rule is not None and before.decision_rule.score == "llr"
    assert before.decision_rule.calibration == "bundled"
    assert before.decision_rule.p_target == pytest.approx(0.01)
    # With one: AS-norm scores, decided by the self-calibration at the naming prior.
    rule = after.decision_rule
    assert rule is not None and rule.calibration == "self" and rule.fitted
    assert rule.p_target == pytest.approx(NAMING_PRIOR)
    assert rule.threshold == pytest.approx(math.log((1 - NAMING_PRIOR) / NAMING_PRIOR))
    _decided_by_its_rule(after, rule.threshold)
    # The same voices; the candidates are ranked on another scale.
    assert [s.speech_seconds for s in after.speakers] == [s.speech_seconds for s in before.speakers]
    for old, new in zip(before.speakers, after.speakers, strict=True):
        assert {m.name for m in new.matches} <= set(by_name)
        assert new.matches and new.matches[0].score != pytest.approx(old.matches[0].score)
    # Names only ever go to this conversation's known speakers, one voice each.
    names = [s.name for s in after.speakers if s.name is not None]
    assert set(names) <= known and len(names) == len(set(names))
    # --norm none keeps raw cosines and the database's rule for them.
    assert raw["decision_rule"] == before.decision_rule.to_dict()
    assert [s["name"] for s in raw["speakers"]] == [s.name for s in before.speakers]
    # A stricter stored operating point wins over the naming prior.
    assert stricter.p_target == pytest.approx(NAMING_PRIOR / 10)
    rule = strict["decision_rule"]
    assert rule["calibration"] == "self" and rule["score"] == "llr"
    assert rule["p_target"] == pytest.approx(NAMING_PRIOR / 10)
    for speaker in strict["speakers"]:
        assert speaker["decision_rule"]["threshold"] == pytest.approx(rule["threshold"])
        for match in speaker["matches"]:
            assert match["accepted"] == (match["score"] >= rule["threshold"])


def _cli_json(*args, db):
    result = CliRunner().invoke(cli, [*args, "--db", db, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
