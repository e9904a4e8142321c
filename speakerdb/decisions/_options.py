"""What a caller may ask of one decision, as one value: :class:`DecisionOptions`, and the one
score-scale type :class:`Scale`.

The CLI builds the options once from its flags (``decision_options`` in the CLI), the HTTP
service once from its form fields, the Python API once from a verb's keyword arguments; the
value then travels unchanged to :func:`~speakerdb.decisions.resolve_policy`, which turns it
and what the database stores into the rule.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb.errors import UsageError
from speakerdb.scoring import DEFAULT_COHORT_TOP_N

__all__ = ["DEFAULT_COHORT_SIZE", "NORMALIZATIONS", "CohortItem", "DecisionOptions", "Scale"]

NORMALIZATIONS = ("none", "asnorm")
"""The score normalisations a caller may name ("none": raw cosine scores)."""

DEFAULT_COHORT_SIZE = DEFAULT_COHORT_TOP_N
"""AS-norm: the N most similar cohort voiceprints used per side (the CLI's --cohort-size)."""

CohortItem = str | os.PathLike[str] | npt.NDArray[np.floating] | npt.NDArray[np.integer]
"""One cohort recording: a path or samples (as the model layer's audio input)."""


class Scale(StrEnum):
    """The scale a score is on, and so the scale of the threshold it is compared with.

    COSINE: the raw cosine in [-1, 1] (no normalisation); ASNORM: its AS-norm z-score;
    LLR: a calibrated log-likelihood ratio (natural log). A normalisation is named by the
    scale it puts scores on: COSINE is the one spelling of "no normalisation" (written
    ``"none"`` by the CLI and HTTP, ``None`` in answers and the store's API).
    """

    COSINE = "cosine"
    ASNORM = "asnorm"
    LLR = "llr"

    @classmethod
    def of_norm(cls, name: str | None) -> Scale:
        """The scale of a normalisation's scores: None or "none" -> COSINE, "asnorm" ->
        ASNORM (a Scale is returned as it is). Raises UsageError for any other name."""
        if isinstance(name, Scale) and name is not cls.LLR:
            return name
        if name is None or name == "none":
            return cls.COSINE
        if name == "asnorm":
            return cls.ASNORM
        raise UsageError(f"normalisation must be one of {', '.join(NORMALIZATIONS)}, not {name!r}")

    @property
    def normalization(self) -> str | None:
        """The normalisation as answers and the store name it: None for raw cosine scores."""
        if self is Scale.LLR:
            raise UsageError("an LLR is a calibrated score, not a normalisation")
        return None if self is Scale.COSINE else self.value

    @property
    def stored(self) -> str:
        """The normalisation as the store keys its settings: "none" or "asnorm"."""
        return NORMALIZATIONS[0] if self.normalization is None else self.value


@dataclass(frozen=True)
class DecisionOptions:
    """A caller's choices for one decision call, validated once on construction.

    threshold: overrides the threshold of the rule in use, on its scale (an LLR when
    calibrated, else a cosine in [-1, 1] or a z-score; checked against that scale when the
    rule is known). prior: decide at the Bayes threshold of this target prior (unit costs).
    far: decide at the LLR where this share of the calibration's impostor trials was
    accepted (at most one of prior and far). norm: the score scale before calibration,
    COSINE (no normalisation) or ASNORM. cohort: AS-norm impostor recordings (None: the
    enrolled voiceprints); cohort_size: the N most similar cohort voiceprints per side.
    """

    threshold: float | None = None
    prior: float | None = None
    far: float | None = None
    norm: Scale = Scale.COSINE
    cohort: tuple[CohortItem, ...] | None = None
    cohort_size: int = DEFAULT_COHORT_SIZE

    def __post_init__(self) -> None:
        if self.prior is not None and self.far is not None:
            raise UsageError("give a prior or a target false-accept rate, not both")
        if self.norm not in (Scale.COSINE, Scale.ASNORM):
            raise UsageError(f"scores are normalised to cosine or asnorm, not {self.norm}")

    @classmethod
    def of(
        cls,
        threshold: float | None = None,
        *,
        prior: float | None = None,
        far: float | None = None,
        norm: str | None = None,
        cohort: Sequence[Any] | None = None,
        cohort_size: int = DEFAULT_COHORT_SIZE,
    ) -> DecisionOptions:
        """The options of loose arguments as the Python API, CLI and HTTP spell them
        (``norm``: None, "none" or "asnorm")."""
        return cls(
            threshold,
            prior,
            far,
            Scale.of_norm(norm),
            None if cohort is None else tuple(cohort),
            cohort_size,
        )

    @property
    def normalization(self) -> str | None:
        """The normalisation as answers name it (None: raw cosine scores)."""
        return self.norm.normalization

    @property
    def operating_point_given(self) -> bool:
        """Whether this call asks for a calibrated decision at its own operating point."""
        return self.prior is not None or self.far is not None
