"""From labelled windows to speaker turns.

Each speech frame (30 ms) takes the label most of the windows covering it carry (a frame
of speech no window covers takes the nearest window's label). Runs of one label become
segments; segments shorter than ``min_turn`` join the neighbour they touch (a short flip
between two voices is noise in the window labels, not a turn); finally segments of one
speaker separated only by a pause shorter than ``max_pause`` are one turn (pauses inside a
turn belong to it).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._speech import FRAME_SECONDS, runs

__all__ = ["MAX_PAUSE", "MIN_TURN", "frame_labels", "segments_of"]

MIN_TURN = 0.4
"""Seconds: shorter segments are absorbed by a neighbour or dropped."""
MAX_PAUSE = 2.0
"""Seconds: a pause this short between two segments of one speaker, with no other voice in
between, does not end the turn (chosen leave-one-set-out among 1, 2 and 3 s: both
conversation sets choose 2)."""


def frame_labels(
    speech: npt.NDArray[np.bool_],
    starts: npt.NDArray[np.float64],
    ends: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.int64]:
    """(f,) int64 cluster label per 32 ms frame, -1 where there is no speech.

    speech: (f,) bool speech frames; starts / ends: (n,) window times in seconds;
    labels: (n,) int64 window clusters. weights: None (each window votes for its cluster),
    or (n, k) float32 soft votes of each window for every cluster (re-segmentation: a frame
    goes to the cluster the windows covering it are, on the whole, closest to).
    """
    f = speech.size
    out = np.full(f, -1, dtype=np.int64)
    if labels.size == 0 or f == 0:
        return out
    k = int(labels.max()) + 1 if weights is None else int(weights.shape[1])
    rows = np.eye(k)[labels] if weights is None else weights.astype(np.float64)
    votes = np.zeros((f + 1, k))
    cover = np.zeros(f + 1, dtype=np.int64)
    first = np.clip(np.floor(starts / FRAME_SECONDS).astype(np.int64), 0, f)
    last = np.clip(np.ceil(ends / FRAME_SECONDS).astype(np.int64), 0, f)
    # Difference arrays: a window's votes added at its first frame, removed after its last.
    np.add.at(votes, first, rows)
    np.subtract.at(votes, last, rows)
    np.add.at(cover, first, 1)
    np.subtract.at(cover, last, 1)
    counts = np.cumsum(votes[:f], axis=0)
    covered = np.cumsum(cover[:f]) > 0
    best = counts.argmax(axis=1)
    if not covered.any():
        return out
    index = np.flatnonzero(covered)
    position = np.clip(np.searchsorted(index, np.arange(f)), 0, index.size - 1)
    before = index[np.clip(position - 1, 0, index.size - 1)]
    after = index[position]
    nearest = np.where(np.abs(before - np.arange(f)) < np.abs(after - np.arange(f)), before, after)
    best = np.where(covered, best, best[nearest])
    return np.where(speech, best, -1)


def segments_of(
    labels: npt.NDArray[np.int64], min_turn: float = MIN_TURN, max_pause: float = MAX_PAUSE
) -> list[tuple[float, float, int]]:
    """Turns ``(start s, end s, cluster)`` from (f,) frame labels (-1: no speech), sorted,
    never overlapping, each at least ``min_turn`` long."""
    segments: list[list[int]] = []
    for a, b in runs(labels >= 0):
        values = labels[a:b]
        cuts = [0, *(np.flatnonzero(np.diff(values)) + 1).tolist(), b - a]
        segments.extend([a + s, a + e, int(values[s])] for s, e in itertools.pairwise(cuts))
    # Frames needed to reach min_turn (ceil: a turn is never shorter than asked).
    short = math.ceil(min_turn / FRAME_SECONDS - 1e-9)
    pause = round(max_pause / FRAME_SECONDS)
    # Shortest first: a run of flips shrinks to the voice around it.
    while True:
        candidates = [i for i, s in enumerate(segments) if s[1] - s[0] < short]
        if not candidates:
            break
        i = min(candidates, key=lambda j: segments[j][1] - segments[j][0])
        seg = segments[i]
        left = segments[i - 1] if i > 0 and segments[i - 1][1] == seg[0] else None
        right = segments[i + 1] if i + 1 < len(segments) and segments[i + 1][0] == seg[1] else None
        if left is None and right is None:
            del segments[i]
            continue
        longer = max((s for s in (left, right) if s is not None), key=lambda s: s[1] - s[0])
        seg[2] = longer[2]
        segments = _merge(segments, 0)
    merged = _merge(segments, pause)
    return [(s * FRAME_SECONDS, e * FRAME_SECONDS, c) for s, e, c in merged]


def _merge(segments: list[list[int]], pause: int) -> list[list[int]]:
    """Join consecutive segments of one label whose gap is at most ``pause`` frames."""
    out: list[list[int]] = []
    for seg in segments:
        if out and out[-1][2] == seg[2] and seg[0] - out[-1][1] <= pause:
            out[-1][1] = seg[1]
        else:
            out.append(list(seg))
    return out
