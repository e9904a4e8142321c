"""How far a self-calibration moves from the bundled one, chosen on the database's own speakers.

The affine self-calibration is ``llr = a * llr_bundled + c``, mixed with the bundled
calibration as ``lam * (a, c) + (1 - lam) * (1, 0)``. A fixed ``lam = n / (n + k)`` trusts the
bundled calibration as much on a phone line, where it is three times too flat (held-out fits
give a ~ 3), as on the read speech it was fitted on (a ~ 1.5-2), so a phone database stays
under-confident. :func:`validated_weight` lets the database's own speakers say how far the fit
may go: split by speaker into folds, for each fold (a, c) is fitted on the trials that
involve none of its speakers (neither as probe nor as voiceprint) and every ``lam`` of
:data:`WEIGHT_GRID` is scored on the trials that involve them, by the loss the fit itself
minimises (prior-weighted cross-entropy at p_fit, every speaker weighing the same); the
``lam`` with the lowest summed held-out loss wins (the smallest on ties). The caller caps it
at ``n / (n + k)``: with a handful of speakers the folds are too few to trust on their own.

Pure numpy: no SQL, no torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb._calibration import (
    TrialQuality,
    fit_calibration,
    group_weights,
)

__all__ = ["MAX_FOLDS", "WEIGHT_GRID", "affine_fit", "validated_weight"]

WEIGHT_GRID = tuple(float(x) for x in np.linspace(0.0, 1.0, 21))
"""The weights on the fit that :func:`validated_weight` compares (steps of 0.05)."""

MAX_FOLDS = 10
"""Speakers are split into at most this many folds (one speaker a fold up to 10): the cost
stays ten small fits whatever the database's size."""

_MODEL: dict[str, Any] = {"name": "shrinkage", "weights_sha256": "", "dimension": 0}


def affine_fit(
    llr: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64],
    p_fit: float,
) -> tuple[float, float]:
    """(a, c) of ``a * llr + c`` fitted by the prior-weighted logistic regression of
    :func:`speakerdb._calibration.fit_calibration` (every ``groups`` value weighing the same
    within each class). llr, labels, groups: (n,)."""
    one = fit_calibration(
        TrialQuality.of(llr, 1.0, 1.0),
        labels,
        model=_MODEL,
        features=("score",),
        p_fit=p_fit,
        groups=groups,
        clip_inputs=False,
    )
    return float(one.weights[0]), float(one.bias)


def _loss(
    llr: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64],
    p_fit: float,
) -> float:
    weights = group_weights(labels, groups)
    target = labels == 1
    logit = math.log(p_fit / (1.0 - p_fit))
    miss = np.logaddexp(0.0, -(llr[target] + logit))
    false_alarm = np.logaddexp(0.0, llr[~target] + logit)
    return float(p_fit * weights[target] @ miss + (1.0 - p_fit) * weights[~target] @ false_alarm)


def validated_weight(
    llr: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64],
    prints: npt.NDArray[np.int64],
    p_fit: float,
) -> float:
    """The weight on the affine fit, in [0, 1], chosen by speaker-held-out validation (see
    the module). llr: (n,) the bundled calibration's LLRs of the enrollment trials; labels:
    (n,) 1 same / 0 different speaker; groups / prints: (n,) the probe's and the
    voiceprint's speaker. 0 when no fold can be scored (too few speakers)."""
    eligible = np.unique(groups[labels == 1])
    folds = np.arange(eligible.size) % MAX_FOLDS
    grid = np.asarray(WEIGHT_GRID)
    total = np.zeros(grid.size)
    scored = 0
    for fold in range(min(MAX_FOLDS, eligible.size)):
        held = eligible[folds == fold]
        test = np.isin(groups, held) | np.isin(prints, held)
        train = ~test
        if not _both(labels[train]) or not _both(labels[test]):
            continue
        a, c = affine_fit(llr[train], labels[train], groups[train], p_fit)
        for i, lam in enumerate(grid):
            mixed = (lam * a + 1.0 - lam) * llr[test] + lam * c
            total[i] += _loss(mixed, labels[test], groups[test], p_fit)
        scored += 1
    if scored == 0:
        return 0.0
    return float(grid[int(np.argmin(total))])


def _both(labels: npt.NDArray[np.int64]) -> bool:
    return bool(labels.any() and not labels.all())
