"""Identification's ranking: every candidate of one probe decided by the policy and ranked on
the score the rule compares (:func:`rank_candidates`). The rule itself lives in
:mod:`speakerdb.decisions`; this module only knows the store's candidates."""

from __future__ import annotations

from collections.abc import Sequence

from speakerdb._results import DecisionRule
from speakerdb.decisions import UNKNOWN_PROBE_QUALITY, Decision, DecisionPolicy, Side
from speakerdb.storage._records import Candidate

__all__ = ["RERANKED_CANDIDATES", "rank_candidates"]

RERANKED_CANDIDATES = 20
"""Identification with a calibration (or AS-norm) ranks at least this many candidates, the
nearest by cosine: the LLR of a voiceprint depends on its own enrollment quality, so the
LLR order may differ from the cosine order a little further down the list."""


def rank_candidates(
    policy: DecisionPolicy,
    candidates: Sequence[Candidate],
    cosines: dict[int, float],
    probe: Side,
) -> tuple[list[tuple[Candidate, Decision]], DecisionRule]:
    """Decide every identification candidate of one probe and rank them, best first by the
    score the rule compares. ``candidates``' scores are on the policy's scale (cosine, or
    z-score after AS-norm); ``cosines``: their raw cosines by speaker id.

    One rule per identification, so that the ranking compares like with like: the LLR rule
    when every candidate can be calibrated, else the score rule for all of them (its note
    says how many enrollments lack a bandwidth). Returns the ranked pairs and the rule.
    """
    enrolls = [Side(c.speech_seconds, c.utterances, c.bandwidth_hz) for c in candidates]
    decisions = policy.decide(
        [cosines.get(c.id, c.score) for c in candidates],
        [c.score for c in candidates],
        [probe] * len(candidates),
        enrolls,
    )
    rule = policy.rule
    lacking = [d for d in decisions if d.llr is None]
    if policy.llr_rule is not None and lacking:
        if probe.known:
            why = (
                f"not calibrated: {len(lacking)} of {len(decisions)} candidates' enrollment "
                "bandwidths are unknown (enrolled before schema 0004; re-enroll them to "
                "calibrate)"
            )
        else:
            why = UNKNOWN_PROBE_QUALITY
        rule = policy.score_rule.with_note(why)
        decisions = [
            Decision(d.cosine, d.llr, float(c.score), rule)
            for c, d in zip(candidates, decisions, strict=True)
        ]
    ranked = sorted(
        zip(candidates, decisions, strict=True), key=lambda pair: (-pair[1].score, pair[0].id)
    )
    return ranked, rule
