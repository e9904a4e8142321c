"""Speaker-change rules measured against the library's, and not kept: each chosen on one set
and reported on the other, on the calls and windows of benchmarks/live_change_choice.py.

The library's rule (speakerdb/live/_change.py) compares the mean of the last 6 window
embeddings with the segment's own earlier checks. Three other rules, replayed on the same
recorded windows, each with its own grid, chosen by the same value (hand-overs within 3 s,
minus twice the shares of hand-overs with a change before the join and of one-voice calls
with a change), the first in grid order on ties:

- ``cusum``: each single window's cosine with the segment's centre, in standard deviations
  of the segment's own earlier windows (leave-one-out), accumulated (CUSUM) until a
  threshold. Grid: slack k, threshold h, windows before testing, windows held back from
  the reference, a floor on the standard deviation.
- ``centred``: windows centred before the cosine by the mean window of the *other*
  speakers' one-voice calls of the set (what a database's enrollments of other people would
  give), then the library's rule on a wider grid of drops; ``centred-transductive`` uses the
  mean of every call of the set, the speakers of the call included (not a deployable rule:
  it shows how much of a gain such a mean fakes).
- ``after-pause``: the library's rule plus a check of the windows that begin after the last
  pause (a jump in the windows' starts of at least P s), from N windows on, with its own
  drop. Grid: P, N, the drop.

    python benchmarks/live_change_variants.py [--windows FILE]

``--windows FILE`` keeps the recorded windows (outside the repository) for reruns, as in
live_change_choice.py: recording is ~6 minutes on 2 cores, the replays about a minute.
"""

from __future__ import annotations

import argparse
import collections
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from live_change_choice import (
    SETS,
    Call,
    _line,
    _recorded,
    first_change,
    held_out_choices,
    replay_rule,
)

import speakerdb.live._change as live_change
from _common import emit
from speakerdb.live._change import change_drop
from speakerdb.live._windows import WINDOW_HOP_SAMPLES
from speakerdb.model._audio import SAMPLE_RATE

BASE = (0.09, 2, 1, 6)  # the library's constants (drop, min checks, confirmations, windows)
HOP_S = WINDOW_HOP_SAMPLES / SAMPLE_RATE


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def cusum(call: Call, k: float, h: float, least: int, lag: int, floor: float) -> float | None:
    reference: list[np.ndarray] = []
    pending: collections.deque[np.ndarray] = collections.deque()
    total = 0.0
    for time, raw in call.windows:
        vector = _unit(raw)
        if len(reference) >= least:
            stack = np.stack(reference)
            whole = stack.sum(axis=0)
            others = whole[None, :] - stack
            others /= np.linalg.norm(others, axis=1, keepdims=True)
            own = (stack * others).sum(axis=1)  # each window against the rest
            z = (own.mean() - float(vector @ _unit(whole))) / max(float(own.std()), floor)
            total = max(0.0, total + z - k)
            if total >= h:
                return time
        pending.append(vector)
        if len(pending) > lag:
            oldest = pending.popleft()
            if total == 0.0:  # only windows while nothing is building up
                reference.append(oldest)
                del reference[: -live_change.CHANGE_HISTORY_WINDOWS]
    return None


def centred(calls: list[Call], transductive: bool) -> list[Call]:
    """The calls with every window centred on a mean window (see the module docstring)."""
    alone = [c for c in calls if c.speakers[0] == c.speakers[1]]

    def mean(excluded: set[str]) -> np.ndarray:
        pool = calls if transductive else [c for c in alone if c.speakers[0] not in excluded]
        return np.mean([v for c in pool for _, v in c.windows], axis=0)

    out = []
    for call in calls:
        centre = mean(set(call.speakers))
        windows = [(t, _unit(v - centre)) for t, v in call.windows]
        out.append(Call(call.join, windows, call.starts, call.speakers))
    return out


def after_pause(call: Call, pause: float, least: int, drop: float) -> float | None:
    base_drop, _, _, count = BASE
    same: collections.deque[np.ndarray] = collections.deque(
        maxlen=live_change.CHANGE_HISTORY_WINDOWS
    )
    since = 0  # the first window after the last pause
    for i, (time, _) in enumerate(call.windows):
        if i > 0 and call.starts[i] - call.starts[i - 1] >= HOP_S + pause - 1e-6:
            since = i
        fall = None
        if i + 1 >= count:
            check = _unit(np.mean([v for _, v in call.windows[i - count + 1 : i + 1]], axis=0))
            fall = change_drop(check, same)
            if fall is not None and fall >= base_drop:
                return time
        fresh = i - since + 1
        if since > 0 and least <= fresh < count:
            part = _unit(np.mean([v for _, v in call.windows[since : i + 1]], axis=0))
            fell = change_drop(part, same)
            if fell is not None and fell >= drop:
                return time
        if i + 1 >= count and (fall is None or fall < base_drop):
            same.append(check)
    return None


def loso(
    calls: dict[str, list[Call]], grid: list[Any], rule: Callable[[Call, Any], float | None]
) -> list[dict[str, Any]]:
    results = {
        name: {g: replay_rule(calls[name], lambda c, g=g: rule(c, g)) for g in grid}
        for name in SETS
    }
    return held_out_choices(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--windows", default=None, help="Keep the recorded windows in this file (outside the repo)."
    )
    args = parser.parse_args()
    from speakerdb import load_model

    calls = _recorded(args.windows, load_model(device="cpu"), 3, 8)
    drops = [0.07, 0.09, 0.11, 0.13, 0.15, 0.18, 0.21, 0.25, 0.3, 0.35, 0.4]
    families: dict[str, tuple[dict[str, list[Call]], list[Any], Callable[[Call, Any], Any]]] = {
        "library rule": (calls, [BASE], lambda c, g: first_change(c, *g)),
        "cusum": (
            calls,
            list(
                itertools.product(
                    (1.0, 1.5, 2.0, 3.0), (5, 10, 15, 20, 30, 45), (6, 8), (0, 4), (0.04, 0.08)
                )
            ),
            lambda c, g: cusum(c, *g),
        ),
        "after-pause": (
            calls,
            list(
                itertools.product(
                    (0.15, 0.25, 0.4, 0.6), (2, 3, 4), (0.07, 0.09, 0.11, 0.13, 0.15, 0.18, 0.21)
                )
            ),
            lambda c, g: after_pause(c, *g),
        ),
    }
    for name, transductive in (("centred", False), ("centred-transductive", True)):
        shifted = {s: centred(calls[s], transductive) for s in SETS}
        grid = list(itertools.product(drops, (2,), (1, 2), (3, 4, 5, 6)))
        families[name] = (shifted, grid, lambda c, g: first_change(c, *g))
    lines = ["speaker-change rules, each chosen on one set and reported on the other:"]
    record: dict[str, Any] = {"benchmark": "live_change_variants"}
    for name, (family_calls, grid, rule) in families.items():
        record[name] = loso(family_calls, grid, rule)
        lines += [
            _line(f"  {name}, chosen on {r['chosen_on']} {r['candidate']} -> {r['held_out']}", r)
            for r in record[name]
        ]
    emit(lines, record)


if __name__ == "__main__":
    main()
