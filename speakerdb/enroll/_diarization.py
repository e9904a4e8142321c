"""Naming the voices of a diarized recording after enrolled speakers.

Each voice's voiceprint is scored against the enrolled speakers exactly as an identification
is (:func:`speakerdb.enroll._ranking.rank_candidates`: the database's policy, calibrated when
it is, with the voice's own speech seconds and the recording's bandwidth as the probe's
quality); then the accepted pairs are assigned one-to-one (Hungarian). Voices nobody
matches are ``unknown_1``, ``unknown_2``... in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from speakerdb._identity import ModelIdentity
from speakerdb._results import DecisionRule
from speakerdb.decisions import Decision, DecisionPolicy, Side
from speakerdb.diarize import (
    MIN_NAMING_SECONDS,
    Diarization,
    DiarizedSpeaker,
    SpeakerMatch,
    Turn,
    VoiceAnalysis,
    assign_one_to_one,
)
from speakerdb.enroll._ranking import RERANKED_CANDIDATES, rank_candidates
from speakerdb.storage._records import Candidate
from speakerdb.storage._store import EnrollmentStore

__all__ = ["SHOWN_MATCHES", "Rescore", "name_voices"]

Rescore = Callable[[npt.NDArray[np.float32], list[list[Candidate]]], list[list[Candidate]]]
"""Re-scores identification candidates (the voices' voiceprints (k, D), their candidates)."""

SHOWN_MATCHES = 3
"""Candidates reported per voice."""


def name_voices(
    analysis: VoiceAnalysis,
    policy: DecisionPolicy,
    identity: ModelIdentity,
    store: EnrollmentStore,
    rescore: Rescore | None = None,
) -> Diarization:
    """The Diarization of ``analysis`` with each voice named after at most one enrolled
    speaker, and no enrolled speaker named twice. rescore: turns the candidates' cosines
    into the policy's scores (AS-norm), given the voiceprints (k, D) and the candidates."""
    k = analysis.num_voices
    fetch = max(RERANKED_CANDIDATES, k)
    found = store.search(analysis.voiceprints, fetch, identity) if k else []
    cosines = [{c.id: c.score for c in candidates} for candidates in found]
    if rescore is not None and found:
        found = rescore(analysis.voiceprints, found)
    ranked: list[list[tuple[Candidate, Decision]]] = []
    rules: list[DecisionRule] = []
    for i, candidates in enumerate(found):
        probe = Side(float(analysis.voiceprint_seconds[i]), 1, analysis.bandwidth_hz)
        decisions, rule = rank_candidates(policy, candidates, cosines[i], probe)
        ranked.append(decisions)
        rules.append(rule)
    # The (voice, enrolled speaker) matrix of scores and decisions.
    ids = sorted({c.id for pairs in ranked for c, _ in pairs})
    column = {speaker_id: j for j, speaker_id in enumerate(ids)}
    scores = np.zeros((k, len(ids)))
    accepted = np.zeros((k, len(ids)), dtype=bool)
    enough = analysis.speech_seconds >= MIN_NAMING_SECONDS
    for i, pairs in enumerate(ranked):
        for c, d in pairs:
            scores[i, column[c.id]] = d.score
            accepted[i, column[c.id]] = d.accepted and bool(enough[i])
    assigned = assign_one_to_one(scores, accepted)

    speakers: list[DiarizedSpeaker] = []
    labels: list[str] = []
    unknown = 0
    for i in range(k):
        pairs = ranked[i] if i < len(ranked) else []
        matches = [
            SpeakerMatch(c.name, d.score, d.cosine, d.llr, d.accepted)
            for c, d in pairs[:SHOWN_MATCHES]
        ]
        chosen = assigned[i]
        pick = next((p for p in pairs if chosen is not None and p[0].id == ids[chosen]), None)
        note = None
        if pick is None:
            unknown += 1
            label = f"unknown_{unknown}"
            best = pairs[0] if pairs else None
            if best is not None and best[1].accepted and not enough[i]:
                note = (
                    f"too little speech to name: {analysis.speech_seconds[i]:.1f} s, "
                    f"at least {MIN_NAMING_SECONDS:g} s needed"
                )
            elif best is not None and best[1].accepted:
                note = f"its best match {best[0].name} was assigned to another voice"
            elif not enough[i]:
                note = (
                    f"too little speech to name: {analysis.speech_seconds[i]:.1f} s, "
                    f"at least {MIN_NAMING_SECONDS:g} s needed"
                )
        else:
            best = pick
            label = pick[0].name
        labels.append(label)
        speakers.append(
            DiarizedSpeaker(
                label=label,
                name=pick[0].name if pick is not None else None,
                speech_seconds=float(analysis.speech_seconds[i]),
                turns=int(analysis.turn_counts[i]),
                score=best[1].score if best is not None else None,
                cosine=best[1].cosine if best is not None else None,
                llr=best[1].llr if best is not None else None,
                matches=matches,
                decision_rule=rules[i] if i < len(rules) else policy.rule,
                note=note,
            )
        )
    turns = []
    for start, end, voice in analysis.segments:
        named = speakers[voice].name
        score = speakers[voice].score if named else None
        turns.append(Turn(start, end, labels[voice], named, score))
    return Diarization(
        source=analysis.source,
        duration=analysis.duration,
        turns=turns,
        speakers=speakers,
        model=identity.label,
        threshold=policy.rule.threshold,
        decision_rule=policy.rule,
        parameters=analysis.parameters,
        notes=list(analysis.notes),
    )
