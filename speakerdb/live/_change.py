"""The speaker-change rule of a live session: is this check window still the segment's voice?

A check window is a (D,) unit-norm embedding of the last seconds of a segment's speech (GE2E:
the mean of the last few window embeddings; other models: the engine's embedding of the
last seconds). :class:`VoiceChecks` keeps the segment's earlier check windows that matched
its voice and applies the rule to each new one: a change when the window's cosine with
their mean direction falls :data:`CHANGE_DROP` (re-embedded windows:
:data:`CHANGE_DROP_REEMBEDDED`) or more below their own mean cosine with it
(:func:`change_drop`), :data:`CHANGE_CONFIRMATIONS` times in a row, once
:data:`CHANGE_MIN_WINDOWS` are in. Raw scores and the calibrated LLR shift with the channel
(a phone line lowers same-voice cosines, and short narrowband windows are rarely accepted,
so a test on the decision rule missed most phone hand-overs); a drop relative to the same
call's own voice does not. The constants were chosen leave-one-set-out
(benchmarks/live_change_choice.py; docs/live.md, "Speaker changes"). They are read at each
call, so a benchmark can replay other values.
"""

from __future__ import annotations

import collections

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHANGE_CONFIRMATIONS",
    "CHANGE_DROP",
    "CHANGE_DROP_REEMBEDDED",
    "CHANGE_HISTORY_WINDOWS",
    "CHANGE_MIN_WINDOWS",
    "VoiceChecks",
    "change_drop",
]

CHANGE_CONFIRMATIONS = 1
# Cosine drops, chosen leave-one-set-out (benchmarks/live_change_choice.py): on window
# embeddings (GE2E) and on the last seconds re-embedded by the engine (other models).
CHANGE_DROP = 0.09
CHANGE_DROP_REEMBEDDED = 0.09
CHANGE_MIN_WINDOWS = 2
CHANGE_HISTORY_WINDOWS = 120  # the segment's last minute of speech, in window steps


class VoiceChecks:
    """One segment's same-voice check windows and the change rule on a new one. Not
    thread-safe (one session's feed at a time)."""

    def __init__(self) -> None:
        # the segment's earlier check windows that matched its voice (unit-norm)
        self.same: collections.deque[npt.NDArray[np.float32]] = collections.deque(
            maxlen=CHANGE_HISTORY_WINDOWS
        )
        self.misses = 0  # windows in a row that did not match

    def changed(self, vector: npt.NDArray[np.float32], reembedded: bool) -> bool:
        """Apply the rule to a new (D,) unit-norm check window: True when the voice changed
        (the window is then not kept); False keeps a matching window as the voice's, and
        counts a mismatch not yet confirmed."""
        drop = change_drop(vector, self.same)
        if drop is None or drop < (CHANGE_DROP_REEMBEDDED if reembedded else CHANGE_DROP):
            self.same.append(vector)
            self.misses = 0
            return False
        self.misses += 1
        return self.misses >= CHANGE_CONFIRMATIONS


def change_drop(
    vector: npt.NDArray[np.float32], windows: collections.deque[npt.NDArray[np.float32]]
) -> float | None:
    """How far (cosine) a window falls below the segment's own same-voice level: the mean
    cosine of the segment's earlier windows with their mean direction, minus this window's
    cosine with it. Both cosines come from the same call, channel and speaker, so the
    difference does not depend on the channel's shift of raw scores (a phone line lowers
    same-voice cosines as much as it raises other-voice ones). None: too few windows."""
    if len(windows) < CHANGE_MIN_WINDOWS:
        return None
    earlier = np.stack(list(windows))
    centre = earlier.mean(axis=0)
    norm = float(np.linalg.norm(centre))
    if norm == 0.0:
        return None
    centre = centre / norm
    level = float((earlier @ centre).mean())
    return level - float(vector @ centre)
