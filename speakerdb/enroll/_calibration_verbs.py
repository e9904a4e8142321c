"""SpeakerDB's calibration administration: fit a calibration or a threshold on the user's
trials, opt in to the bundled one, move the operating point, reset, describe."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from speakerdb._results import DecisionRule
from speakerdb.decisions import (
    DecisionOptions,
    Scale,
    bundled_for,
    resolve_policy,
)
from speakerdb.enroll._base import (
    Progress,
    prior_or_default,
    reported_far,
)
from speakerdb.enroll._cohort import normalization
from speakerdb.enroll._evaluation import (
    CalibrationResult,
    trials_digest,
)
from speakerdb.enroll._lists import Trial
from speakerdb.errors import UsageError
from speakerdb.model._audio import AudioInput
from speakerdb.scoring import DEFAULT_COHORT_TOP_N
from speakerdb.storage._records import (
    CalibrationSetting,
)

if TYPE_CHECKING:
    pass

from speakerdb.enroll._evaluate_verbs import EvaluationVerbs

__all__ = ["CalibrationVerbs"]


class CalibrationVerbs(EvaluationVerbs):
    """The calibration verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def calibrate(
        self,
        trials: Sequence[Trial],
        *,
        prior: float | None = None,
        far: float | None = None,
        rule: str = "llr",
        target: str = "far",
        norm: str | None = None,
        cohort: Sequence[AudioInput] | None = None,
        cohort_size: int = DEFAULT_COHORT_TOP_N,
        progress: Progress | None = None,
        trials_sha256: str | None = None,
    ) -> CalibrationResult:
        """Calibrate this database on the user's own labelled trials and store the result:
        verify, compare and identify decide with it from then on.

        rule "llr" (default): fit a calibration of the scores (cosine, or AS-norm z-score
        with norm="asnorm") and the quality measures of both files to LLRs (prior-weighted
        logistic regression at p_fit = ``prior``, default 0.01; see
        :func:`speakerdb._calibration.fit_calibration`) and store it with the operating point
        (``prior``, or the target false-accept rate ``far`` looked up in the calibration's
        table; default p_target 0.01) and what it was fitted on (counts, date,
        ``trials_sha256``: the trial list's sha256, by default that of its lines). Needs at
        least :data:`MIN_TARGET_TRIALS` same-speaker and :data:`MIN_NONTARGET_TRIALS`
        different-speaker trials. rule "score": store a threshold on the score scale (the
        old way): the lowest with at most ``far`` (default 1 %) false accepts (target
        "far") or the one at the equal error rate (target "eer").

        Returns the stored rule and the evaluation of the trials with it (in-sample).
        Raises UsageError for too few trials or bad options.
        """
        if rule not in ("llr", "score"):
            raise UsageError(f"calibration rule must be 'llr' or 'score', not {rule!r}")
        key = normalization(norm)
        if rule == "score":
            return self._calibrate_threshold(
                trials, far, target, key, cohort, cohort_size, progress
            )
        if target != "far":
            raise UsageError("--target applies to --rule score only")
        if prior is not None and far is not None:
            raise UsageError("give a prior or a target false-accept rate, not both")
        scored = self._score_trials(trials, key, cohort, cohort_size, progress)
        identity = self.identity
        calibration, used = scored.fit(
            identity,
            p_fit=prior_or_default(prior),
            score=Scale.of_norm(key).value,
            trials_sha256=trials_sha256 or trials_digest(trials),
        )
        setting = CalibrationSetting(
            normalization=Scale.of_norm(key).stored,
            kind="llr",
            threshold=self.store.threshold(key)[0],  # still decides what cannot be calibrated
            source="database",
            calibration=calibration.to_dict(),
            p_target=None if far is not None else prior_or_default(prior),
            c_miss=None if far is not None else 1.0,
            c_fa=None if far is not None else 1.0,
            target_far=far,
            trials_sha256=calibration.fit.trials_sha256,
            target_trials=calibration.fit.target_trials,
            nontarget_trials=calibration.fit.nontarget_trials,
            note=f"fitted on {used} distinct trials of {len(scored.trials) + scored.skipped}",
        )
        policy = resolve_policy(
            identity, DecisionOptions.of(norm=key), setting=setting
        )  # checks the operating point before anything is stored
        # A calibration belongs to a model: a database without one adopts it now.
        self.store.adopt_model(identity)
        self.store.set_calibration(setting)
        report = scored.summary(policy, reported_far(far), identity.label, key)
        return CalibrationResult("llr", policy.rule, report, calibration)

    def _calibrate_threshold(
        self,
        trials: Sequence[Trial],
        far: float | None,
        target: str,
        key: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
        progress: Progress | None,
    ) -> CalibrationResult:
        if target not in ("far", "eer"):
            raise UsageError(f"calibration target must be 'far' or 'eer', not {target!r}")
        report_far = reported_far(far)
        scored = self._score_trials(trials, key, cohort, cohort_size, progress)
        report = scored.summary(
            self.decision_policy(DecisionOptions.of(norm=key)), report_far, self.identity.label, key
        )
        threshold = report.threshold_at_far if target == "far" else report.threshold
        how = f"{report_far:.2%} false accepts" if target == "far" else "the equal error rate"
        note = (
            f"threshold at {how} on {report.target_trials} target / {report.nontarget_trials} "
            f"non-target trials (EER {report.eer:.2%})"
        )
        self.store.adopt_model(self.identity)
        self.store.set_threshold(threshold, note, key)
        rule = DecisionRule(Scale.of_norm(key), threshold, "database")
        return CalibrationResult("threshold", rule, report, None)

    def use_bundled_calibration(
        self, norm: str | None = None, *, prior: float | None = None, far: float | None = None
    ) -> DecisionRule:
        """Decide with the model's bundled calibration (at p_target ``prior`` or false-accept
        rate ``far``; default p_target 0.01): how a database created before schema 0004 opts
        in. Returns the rule now in use. Raises UsageError when the model has none, or for
        AS-norm scores (the bundled calibrations map raw cosines)."""
        key = normalization(norm)
        if key is not None:
            raise UsageError(
                "the bundled calibration maps cosine scores; for AS-norm scores fit one on "
                "your trials (speakerdb calibrate TRIALS --norm asnorm)"
            )
        if bundled_for(self.identity.key) is None:
            raise UsageError(
                f"model {self.identity.label} has no bundled calibration: fit one with "
                "`speakerdb calibrate TRIALS`"
            )
        return self._store_operating_point(
            CalibrationSetting(
                "none", "llr", source="bundled", threshold=self.store.threshold(None)[0]
            ),
            prior,
            far,
        )

    def set_operating_point(
        self, norm: str | None = None, *, prior: float | None = None, far: float | None = None
    ) -> DecisionRule:
        """Move the operating point of the calibration in use (bundled or the database's own)
        to p_target ``prior`` (unit costs) or false-accept rate ``far``; stored. Returns the
        rule now in use. Raises UsageError when the database decides without a calibration
        (opt in with :meth:`use_bundled_calibration` or :meth:`calibrate`)."""
        key = normalization(norm)
        if (prior is None) == (far is None):
            raise UsageError("give a prior or a target false-accept rate (one of them)")
        default, setting = self.store.calibration_setting(key)
        if setting is None and default in ("bundled", "auto") and key is None:
            setting = CalibrationSetting("none", "llr", source="bundled")
        if setting is None or setting.kind != "llr":
            scale = Scale.of_norm(key)
            raise UsageError(
                f"this database decides on {scale} scores without a calibration: opt in with "
                "`speakerdb calibrate --bundled` or fit one with `speakerdb calibrate TRIALS`"
            )
        return self._store_operating_point(setting, prior, far)

    def _store_operating_point(
        self, setting: CalibrationSetting, prior: float | None, far: float | None
    ) -> DecisionRule:
        if prior is not None and far is not None:
            raise UsageError("give a prior or a target false-accept rate, not both")
        p_target = None if far is not None else prior_or_default(prior)
        changed = dataclasses.replace(
            setting,
            p_target=p_target,
            c_miss=None if p_target is None else 1.0,
            c_fa=None if p_target is None else 1.0,
            target_far=far,
            note=setting.note if setting.source != "bundled" else "bundled calibration",
        )
        options = DecisionOptions.of(norm=setting.normalization)
        key = options.normalization
        policy = resolve_policy(self.identity, options, setting=changed)
        auto = self.store.calibration_setting(key)[0] == "auto"
        self.store.set_calibration(changed)
        if auto and changed.source == "self":  # moving its operating point keeps auto mode
            self.set_auto_calibration(True)
        return policy.rule

    def reset_calibration(self, norm: str | None = None) -> DecisionRule:
        """Forget this database's calibration or threshold for a normalisation: the default
        applies again -- the bundled calibration for raw cosine scores (in databases created
        since schema 0004 or opted in; else the model's cosine threshold), the model's
        threshold for AS-norm scores. Returns the rule now in use."""
        key = normalization(norm)
        self.store.clear_calibration(key)
        if key is None and self.store.calibration_setting(None)[0] == "auto":
            self.set_auto_calibration(False)  # else the next decision would fit again
        return self.decision_policy(DecisionOptions.of(norm=key)).rule

    def calibrate_from_enrollments(
        self, *, prior: float | None = None, far: float | None = None, norm: str | None = None
    ) -> CalibrationResult:
        """Self-calibrate: fit a calibration of raw cosine scores on this database's own
        enrollments and store it (source "self"; see
        :mod:`speakerdb.enroll._self_calibration`). Same-speaker trials: each recording of a
        speaker with two or more against the voiceprint of the others; different-speaker
        trials: recordings against other speakers' voiceprints; near-duplicates dropped, every
        speaker weighing the same, the fit shrunk toward the bundled calibration when the
        speakers are few. prior / far: the operating point (default p_target 0.01). norm
        "asnorm": calibrate AS-norm z-scores instead (each trial normalised against the
        voiceprints of the speakers other than its two; not shrunk, no auto mode), used by
        ``verify``/``identify``/``diarize`` with ``norm="asnorm"``.

        Returns the rule now in use and the report on the enrollment trials (in-sample).
        Raises UsageError for a database with too few enrollments (the message says how many
        are needed), read-only, or bad options."""
        from speakerdb.enroll._self_calibration import calibrate_from_enrollments

        return calibrate_from_enrollments(self, prior=prior, far=far, norm=normalization(norm))

    def set_auto_calibration(self, on: bool = True) -> dict[str, Any]:
        """Auto mode on: the bundled calibration decides until the database has enough
        enrollments, then its self-calibration, re-fitted at the start of a decision when the
        enrollments changed enough (a fifth more or fewer speakers, or any deletion). Off:
        whatever is stored stays. Returns :meth:`calibration_info`. Raises UsageError
        (read-only)."""
        from speakerdb.enroll._self_calibration import set_auto

        set_auto(self, on)
        return self.calibration_info(None)

    def calibration_info(self, norm: str | None = None) -> dict[str, Any]:
        """What decides here for a normalisation, JSON-compatible: the rule in use, whose
        calibration (``calibration``: "bundled", "database", "self" or None), the database's
        default, the stored setting (operating point, counts, trial list sha256, date) and
        the calibration's own fit summary."""
        key = normalization(norm)
        default, setting = (
            self.store.calibration_setting(key) if self._store is not None else ("bundled", None)
        )
        policy = self.decision_policy(DecisionOptions.of(norm=key))
        stored = None
        if setting is not None:
            stored = {k: v for k, v in dataclasses.asdict(setting).items() if k != "calibration"}
        fit = None
        if policy.calibration is not None:
            fit = policy.calibration.to_dict()["fit"]
        own: dict[str, Any] | None = None
        if self._store is not None and key is None:
            from speakerdb.enroll._self_calibration import self_calibration_status

            own = self_calibration_status(self, *self.store.calibration_setting(None))
        return {
            "normalization": key,
            "decision_rule": policy.rule.to_dict(),
            "calibration": policy.rule.calibration,
            "default": default,
            "stored": stored,
            "fit": fit,
            "self_calibration": own,
            "model": self.identity.label,
        }
