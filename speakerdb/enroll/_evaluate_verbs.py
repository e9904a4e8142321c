"""SpeakerDB's evaluation: error rates and the decisions taken on labelled trials, each
distinct file embedded once (:mod:`._evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from speakerdb.decisions import DecisionOptions
from speakerdb.enroll._base import (
    FacadeBase,
    Progress,
    options_of,
    reported_far,
    side_of,
)
from speakerdb.enroll._evaluation import (
    EvaluationReport,
    ScoredTrials,
)
from speakerdb.enroll._lists import Trial, distinct_trials
from speakerdb.errors import UsageError
from speakerdb.model._audio import AudioInput
from speakerdb.scoring import DEFAULT_COHORT_TOP_N

if TYPE_CHECKING:
    pass


__all__ = ["EvaluationVerbs"]


class EvaluationVerbs(FacadeBase):
    """The evaluation verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    # --- evaluation and calibration -----------------------------------------------------------

    def evaluate(
        self,
        trials: Sequence[Trial],
        *,
        far: float | None = None,
        prior: float | None = None,
        threshold: float | None = None,
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
        options: DecisionOptions | None = None,
    ) -> EvaluationReport:
        """Error rates on labelled trials (see :class:`EvaluationReport`), and the decisions
        verify/compare/identify would take on them: the rule in use (with ``prior`` /
        ``far`` / ``threshold`` as in :meth:`verify_many`), its FAR and FRR and, when it is
        calibrated, Cllr, minCllr and actual / minimum DCF at its operating point.

        Each distinct file is embedded once; trials with an unusable file are skipped and the
        file is listed with its reason. far: also the false-accept rate whose score threshold
        on these trials is reported (default 1 %). norm="asnorm": AS-norm scores against
        ``cohort`` recordings (impostors, none of the trials' speakers), else against the
        enrolled speakers' voiceprints; cohort_size: the top-N most similar cohort
        voiceprints used per side. options: all of these but progress as one
        :class:`~speakerdb.decisions.DecisionOptions` instead.
        """
        options = options_of(
            options, threshold, norm=norm, prior=prior, far=far, cohort=cohort, size=cohort_size
        )
        key = options.normalization
        report_far = reported_far(options.far)
        policy = self.decision_policy(options)
        scored = self._score_trials(trials, key, options.cohort, options.cohort_size, progress)
        return scored.summary(policy, report_far, self.identity.label, key)

    def _score_trials(
        self,
        trials: Sequence[Trial],
        norm: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
        progress: Progress | None,
    ) -> ScoredTrials:
        """Embed the trials' files (each once) and score the usable distinct trials (a trial
        and its mirror, or a repeated line, are scored once: see distinct_trials)."""
        if any(t.label is None for t in trials):
            raise UsageError("every trial needs a label (1 same speaker, 0 different)")
        trials, counts = distinct_trials(trials)
        position, embedded = self._embed_distinct(
            [x for t in trials for x in (t.a, t.b)], 0, None, progress
        )
        failed: dict[str, tuple[str, str]] = {}
        for e in embedded:
            if e.error is not None:
                failed[e.source] = (e.error.code, e.error.reason)
        sides = [(position[2 * k], position[2 * k + 1]) for k in range(len(trials))]
        kept = [
            k
            for k, (ia, ib) in enumerate(sides)
            if embedded[ia].vector is not None and embedded[ib].vector is not None
        ]
        scores = self._cohorts.pair_scores(
            embedded, [sides[k] for k in kept], norm, cohort, cohort_size
        )
        return ScoredTrials(
            trials=[trials[k] for k in kept],
            cosines=[raw for raw, _ in scores],
            scores=[used for _, used in scores],
            probes=[side_of(embedded[sides[k][1]]) for k in kept],
            enrolls=[side_of(embedded[sides[k][0]]) for k in kept],
            skipped=len(trials) - len(kept),
            failed=failed,
            counts=counts,
        )
