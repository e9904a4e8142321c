"""SpeakerDB itself: reports that cannot race, and cohorts that check their model."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import by_speaker, fake_utterance, require_data
from speakerdb import SpeakerDB
from speakerdb._identity import ModelIdentity
from speakerdb.errors import ModelMismatchError
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore


def test_enrollment_report_comes_from_the_enrolling_transaction(db_url, model):
    """Another writer changing the speaker right after the commit (a delete here) must not
    change or break the report of what this enrollment did."""
    require_data()
    files = by_speaker("vctk")["p225"]
    with SpeakerDB.open(db_url, model=model) as db:
        real_enroll = db.store.enroll

        def enroll_then_race(request, identity, check=None):
            result = real_enroll(request, identity, check)
            with EnrollmentStore.open(db_url) as other:
                other.delete_speaker(request.name)
            return result

        db.store.enroll = enroll_then_race  # type: ignore[method-assign]
        report = db.enroll("p225", files[:3])
        assert report.created and report.changed
        assert report.accepted == 3 and report.utterances == 3
        assert report.total_speech_seconds == pytest.approx(
            sum(i.speech_seconds for i in report.inputs)
        )
        assert all(i.consistency is not None for i in report.inputs)

        # An append: first enroll for real, then race a concurrent append of a fourth file.
        db.store.enroll = real_enroll  # type: ignore[method-assign]
        db.enroll("p226", files[:0] or by_speaker("vctk")["p226"][:2])

        def append_then_race(request, identity, check=None):
            result = real_enroll(request, identity, check)
            with SpeakerDB.open(db_url, model=model) as other:
                other.enroll(request.name, by_speaker("vctk")["p226"][5:6])
            return result

        db.store.enroll = append_then_race  # type: ignore[method-assign]
        report = db.enroll("p226", by_speaker("vctk")["p226"][2:4])
        assert report.accepted == 2 and report.utterances == 4
        assert {i.consistency is not None for i in report.inputs} == {True}
    with SpeakerDB.open(db_url, model=model) as db:
        assert db.speaker("p226").utterances == 5


def test_asnorm_with_the_database_cohort_checks_the_model(db_url, model):
    """A database holding another model's vectors (same dimension, so nothing else would
    notice) must not serve as a cohort."""
    require_data()
    other = ModelIdentity("other-model", "f" * 64, model.dimension, 0.5)
    rng = np.random.default_rng(0)
    with EnrollmentStore.open(db_url) as store:
        for i in range(12):
            store.enroll(EnrollRequest(f"s{i}", [fake_utterance(rng, model.dimension)]), other)
    a, b = by_speaker("vctk")["p225"][:2]
    with SpeakerDB.open(db_url, model=model) as db:
        with pytest.raises(ModelMismatchError):
            db.compare_batch([(a, b)], norm="asnorm")
        from speakerdb.enroll._lists import Trial

        trials = [Trial(a, b, 1, 1), Trial(a, by_speaker("vctk")["p226"][0], 0, 2)]
        with pytest.raises(ModelMismatchError):
            db.evaluate(trials, norm="asnorm")
        with pytest.raises(ModelMismatchError):
            db.calibrate(trials, norm="asnorm")
