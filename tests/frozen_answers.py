"""The questions asked of a frozen database once upgraded (tests/test_frozen_db.py, and
tools/make_frozen_revisions.py which records the answers when it writes the databases)."""

from __future__ import annotations

from typing import Any

from speakerdb import SpeakerDB, upgrade_database
from speakerdb.decisions import Side
from speakerdb.scoring import cosine


def answers(url: str) -> dict[str, Any]:
    """Upgrade the database at ``url`` to head, then: the revision it came from, its
    speakers (name, recordings), the rule verify uses, and the verify decision of every
    speaker's first stored recording vector against every speaker's voiceprint (probe ->
    claimed -> accepted), decided by the database's own rule as ``verify`` decides."""
    upgraded = upgrade_database(url)
    with SpeakerDB.open(url, read_only=True) as db:
        speakers = db.speakers()
        policy = db.decision_policy(None)
        decisions: dict[str, dict[str, bool]] = {}
        for probe in speakers:
            vector = db.store.utterance_embeddings(probe.name)[0]
            recording = db.utterances(probe.name)[0]
            side = Side(recording.speech_seconds, 1, recording.bandwidth_hz)
            decisions[probe.name] = {}
            for claimed in speakers:
                record, centroid = db.store.centroid(claimed.name)
                score = cosine(vector, centroid)
                enrolled = Side(record.speech_seconds, record.utterances, record.bandwidth_hz)
                (decided,) = policy.decide([score], [score], [side], [enrolled])
                decisions[probe.name][claimed.name] = decided.accepted
        return {
            "from": upgraded.before,
            "to": upgraded.after,
            "speakers": [[s.name, s.utterances] for s in speakers],
            "rule": policy.rule.to_dict()["text"],
            "decisions": decisions,
        }
