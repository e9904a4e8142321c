"""Result types shared by the model layer and the SpeakerDB facade.

Every decision result reports the score the decision used, the threshold it was compared
with, the rule (:class:`DecisionRule`) and the model that made the vectors, so that a caller
can always tell why it was accepted or rejected. ``score`` is the calibrated log-likelihood
ratio when a calibration applies (``llr``, natural log), else the cosine similarity in
[-1, 1] or, with ``normalization`` "asnorm", its AS-norm z-score; the raw cosine is always in
``cosine``. ``calibration`` says whose calibration made the LLR: "bundled" (the model's own),
"database" (fitted on the database's trials) or None (no LLR).

The decided part is made once: a :class:`Decision` (the rule applied to one trial) fills
the decided fields of a :class:`Verification` or :class:`Comparison` (:meth:`Verification.of`,
:meth:`Comparison.of`), and every result shares one :meth:`Decided.to_dict`.

``to_dict()`` is the one source of every answer's fields (CLI ``--json``, the HTTP service).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from speakerdb.decisions._options import Scale
from speakerdb.scoring import accept

__all__ = [
    "Comparison",
    "Decided",
    "Decision",
    "DecisionRule",
    "Identification",
    "Match",
    "Verification",
]

_ORIGINS = {
    "operating_point": "",
    "target_far": "",
    "given": "threshold given",
    "database": "database threshold",
    "model_default": "model default",
}


@dataclass(frozen=True)
class DecisionRule:
    """The one decision rule: accept iff ``score`` >= ``threshold``.

    score: which score is compared -- "llr" (a calibrated log-likelihood ratio), "cosine" or
    "asnorm" (the AS-norm z-score). origin: where the threshold comes from --
    "operating_point" (the Bayes threshold ln(c_fa / c_miss) - logit(p_target) of the
    prior and costs given), "target_far" (the LLR at which the share ``far`` of the
    calibration's impostor trials was accepted), "given" (``--threshold``), "database" (a
    threshold on the score scale stored by ``calibrate --rule score``) or "model_default".
    calibration: "bundled", "database" (fitted on the user's trials) or "self" (fitted on the
    database's own enrollments) for LLRs, else None. fitted: the fit's date (ISO 8601) of a
    "database" or "self" calibration. note: why a calibration in use did not apply to this
    answer (e.g. an enrollment without a measured bandwidth).
    """

    score: Scale
    threshold: float
    origin: str
    calibration: str | None = None
    p_target: float | None = None
    c_miss: float | None = None
    c_fa: float | None = None
    far: float | None = None
    note: str | None = None
    fitted: str | None = None

    def __post_init__(self) -> None:
        # A rule read back from JSON names its scale as a string: one type from here on.
        object.__setattr__(self, "score", Scale(self.score))

    def accepts(self, score: float) -> bool:
        return accept(score, self.threshold)

    @property
    def text(self) -> str:
        """One line, e.g. ``llr >= 4.595 (p_target=0.01, c_miss=1, c_fa=1)`` or
        ``cosine >= 0.82 (model default)``."""
        if self.origin == "operating_point":
            why = f"p_target={self.p_target:g}, c_miss={self.c_miss:g}, c_fa={self.c_fa:g}"
        elif self.origin == "target_far":
            why = f"FAR {self.far:g} on the calibration's impostor trials"
        else:
            why = _ORIGINS.get(self.origin, self.origin)
        if self.calibration is not None:
            why += f"; {self.calibration} calibration"
            if self.fitted:
                why += f" fitted {self.fitted}"
        if self.note:
            why += f"; {self.note}"
        return f"{self.score} >= {self.threshold:.4g} ({why})"

    def with_note(self, note: str) -> DecisionRule:
        return DecisionRule(**{**asdict(self), "note": note})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


@dataclass(frozen=True)
class Decision:
    """One trial decided: its raw cosine, LLR (None when no calibration applied), the score
    the rule compared, and the rule -- the decided part of a result."""

    cosine: float
    llr: float | None
    score: float
    rule: DecisionRule

    @property
    def accepted(self) -> bool:
        return self.rule.accepts(self.score)

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    @property
    def calibration(self) -> str | None:
        return self.rule.calibration if self.llr is not None else None

    def fields(self) -> dict[str, Any]:
        """The decided fields of a scored result (all but its own accepted/same_speaker)."""
        return {
            "score": self.score,
            "threshold": self.threshold,
            "cosine": self.cosine,
            "llr": self.llr,
            "decision_rule": self.rule,
            "calibration": self.calibration,
        }


class Decided:
    """What every decided result shares: its rule in ``decision_rule`` and, where the
    database has a countermeasure, ``spoof`` and ``decision`` (left out of :meth:`to_dict`
    when None, as is a verification's or identification's ``watchlist``). Subclasses are
    frozen dataclasses holding those fields."""

    decision_rule: DecisionRule | None
    spoof: dict[str, Any] | None
    decision: str | None

    def to_dict(self) -> dict[str, Any]:
        out = self._fields()
        for key in ("spoof", "decision", "watchlist"):
            value = getattr(self, key, None)
            if value is None:
                out.pop(key, None)
            elif key not in out:
                out[key] = value
        return out

    def _fields(self) -> dict[str, Any]:
        return _with_rule(asdict(self), self.decision_rule)  # type: ignore[call-overload]


def _rule_of(threshold: float, normalization: str | None) -> DecisionRule:
    """The rule of a result made without one: the score scale compared with ``threshold``."""
    return DecisionRule(Scale.of_norm(normalization), threshold, "given")


def _complete_scored(result: Comparison | Verification) -> None:
    """Fill what a scored result made without a rule derives: its rule (the score scale
    against its threshold) and, on the cosine scale, its cosine (the score itself)."""
    rule = result.decision_rule
    if rule is None:
        rule = _rule_of(result.threshold, result.normalization)
        object.__setattr__(result, "decision_rule", rule)
    if result.cosine is None and rule.score == "cosine":
        object.__setattr__(result, "cosine", result.score)


@dataclass(frozen=True)
class Comparison(Decided):
    """File against file: ``same_speaker`` iff ``score >= threshold`` (see the module)."""

    score: float
    threshold: float
    same_speaker: bool
    model: str
    a: str = ""
    b: str = ""
    normalization: str | None = None
    cosine: float | None = None
    llr: float | None = None
    decision_rule: DecisionRule | None = None
    calibration: str | None = None
    # Where the database has a countermeasure: its answers on both files, {"a": {...}, "b":
    # {...}} (each as Verification's ``spoof``), and "SPOOF_DETECTED" when either is an
    # attack (then ``same_speaker`` is False). Both None otherwise, left out of to_dict.
    spoof: dict[str, Any] | None = None
    decision: str | None = None

    def __post_init__(self) -> None:
        _complete_scored(self)

    @classmethod
    def of(
        cls, decided: Decision, *, model: str, a: str, b: str, normalization: str | None = None
    ) -> Comparison:
        """File against file as ``decided`` decided it (its decided fields in one piece)."""
        return cls(
            **decided.fields(),
            same_speaker=decided.accepted,
            model=model,
            a=a,
            b=b,
            normalization=normalization,
        )


@dataclass(frozen=True)
class Verification(Decided):
    """A probe against an enrolled speaker's voiceprint: ``accepted`` iff score >= threshold."""

    score: float
    threshold: float
    accepted: bool
    speaker: str
    model: str
    source: str = ""
    normalization: str | None = None
    cosine: float | None = None
    llr: float | None = None
    decision_rule: DecisionRule | None = None
    calibration: str | None = None

    # Where the database has a countermeasure (docs/spoofing.md): its answer on this probe,
    # {"model", "score", "llr", "detected"}, and decision "SPOOF_DETECTED" when it caught an
    # attack (then ``accepted`` is False whatever the speaker score). Both None otherwise,
    # and left out of :meth:`to_dict`.
    spoof: dict[str, Any] | None = None
    decision: str | None = None
    # Where the tenant has a watchlist (docs/governance.md): the watchlisted voices this
    # probe matches, [{"name", "score", "llr"}] best first, and decision "KNOWN_FRAUDSTER"
    # when there is one (then ``accepted`` is False). None without a watchlist.
    watchlist: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        _complete_scored(self)

    @classmethod
    def of(
        cls,
        decided: Decision,
        *,
        speaker: str,
        model: str,
        source: str,
        normalization: str | None = None,
    ) -> Verification:
        """A probe against a voiceprint as ``decided`` decided it."""
        return cls(
            **decided.fields(),
            accepted=decided.accepted,
            speaker=speaker,
            model=model,
            source=source,
            normalization=normalization,
        )


@dataclass(frozen=True)
class Match:
    """One candidate of an identification: an enrolled speaker, the score the ranking and
    decision used, its raw cosine and its LLR (None when not calibrated)."""

    name: str
    score: float
    cosine: float | None = None
    llr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identification(Decided):
    """Open-set identification: ``best`` is the top match if it reaches the threshold, else
    None (an unknown speaker). ``matches`` are the top-k candidates, best first by the score
    the decision uses (the LLR when calibrated). ``score`` / ``cosine`` / ``llr``: the top
    match's."""

    best: str | None
    matches: list[Match] = field(default_factory=list)
    threshold: float = 0.0
    model: str = ""
    source: str = ""
    normalization: str | None = None
    decision_rule: DecisionRule | None = None
    calibration: str | None = None
    # As Verification's: the countermeasure's answer, and "SPOOF_DETECTED" (then ``best`` is
    # None: an attack identifies nobody; ``matches`` still show whom it resembles).
    spoof: dict[str, Any] | None = None
    decision: str | None = None
    # As Verification's; a watchlist match identifies nobody (``best`` is None).
    watchlist: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.decision_rule is None:
            object.__setattr__(self, "decision_rule", _rule_of(self.threshold, self.normalization))

    @classmethod
    def of(
        cls,
        rule: DecisionRule,
        best: str | None,
        matches: list[Match],
        *,
        model: str,
        source: str,
        normalization: str | None = None,
    ) -> Identification:
        """An identification decided by ``rule`` (one rule for all its candidates)."""
        calibration = rule.calibration if rule.score is Scale.LLR else None
        return cls(best, matches, rule.threshold, model, source, normalization, rule, calibration)

    @property
    def score(self) -> float | None:
        return self.matches[0].score if self.matches else None

    @property
    def cosine(self) -> float | None:
        return self.matches[0].cosine if self.matches else None

    @property
    def llr(self) -> float | None:
        return self.matches[0].llr if self.matches else None

    def _fields(self) -> dict[str, Any]:
        return _with_rule(
            {
                "best": self.best,
                "score": self.score,
                "cosine": self.cosine,
                "llr": self.llr,
                "matches": [m.to_dict() for m in self.matches],
                "threshold": self.threshold,
                "model": self.model,
                "source": self.source,
                "normalization": self.normalization,
                "calibration": self.calibration,
            },
            self.decision_rule,
        )


def _with_rule(out: dict[str, Any], rule: DecisionRule | None) -> dict[str, Any]:
    out["decision_rule"] = rule.to_dict() if rule is not None else None
    return out
