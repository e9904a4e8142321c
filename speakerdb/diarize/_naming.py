"""One-to-one naming of voices: the Hungarian assignment over accepted scores.

Two voices in one recording are two people, so no enrolled name may go to two clusters.
Among the pairs the decision rule accepts, the assignment first maximises how many voices
are named, then the total score; pairs the rule rejects are never assigned.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["assign_one_to_one"]


def assign_one_to_one(
    scores: npt.NDArray[np.float64], accepted: npt.NDArray[np.bool_]
) -> list[int | None]:
    """For each of k clusters, the index of the enrolled speaker (0..m-1) it is named
    after, or None.

    scores: (k, m) the rule's score of every (cluster, speaker) pair; accepted: (k, m) bool,
    the rule's decision. Rows may be all-False (a voice nobody matches, or one with too
    little speech to name). Deterministic: ties go to the lower indices.
    """
    from scipy.optimize import linear_sum_assignment

    k, m = accepted.shape
    if scores.shape != accepted.shape:
        raise ValueError(f"scores {scores.shape} and accepted {accepted.shape} differ")
    out: list[int | None] = [None] * k
    if k == 0 or m == 0 or not accepted.any():
        return out
    finite = np.where(accepted, scores, 0.0)
    # A rejected pair costs more than any set of accepted pairs can gain, so the solver
    # only uses one when every assignment needs it, and it is discarded below.
    penalty = 1.0 + k * (float(np.abs(finite).max()) * 2.0 + 1.0)
    cost = np.where(accepted, -finite, penalty)
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if accepted[r, c]:
            out[r] = c
    return out
