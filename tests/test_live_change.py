"""The speaker-change rule of live sessions (speakerdb.live._change), on vectors made here."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import speakerdb.live._change as change
from speakerdb.live._change import VoiceChecks, change_drop


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _voice(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> list[np.ndarray]:
    return [_unit(centre + spread * rng.standard_normal(centre.size)) for _ in range(n)]


def test_the_drop_is_relative_to_the_segments_own_level() -> None:
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(64)
    # a noisy channel (wide spread) and a clean one: the same-voice level differs, the drop
    # of a window of the same voice stays near zero on both
    for spread in (0.2, 1.0):
        same = _voice(rng, centre, 12, spread)
        windows = collections.deque(same[:10])
        drops = [change_drop(v, windows) for v in same[10:]]
        assert all(d is not None and abs(d) < 0.05 for d in drops), (spread, drops)


def test_too_few_windows_give_no_drop() -> None:
    v = _unit(np.ones(8))
    assert change_drop(v, collections.deque()) is None
    assert change_drop(v, collections.deque([v] * (change.CHANGE_MIN_WINDOWS - 1))) is None


def test_a_new_voice_is_a_change_and_is_not_kept() -> None:
    rng = np.random.default_rng(1)
    alice, bob = rng.standard_normal(64), rng.standard_normal(64)
    checks = VoiceChecks()
    assert not any(checks.changed(v, reembedded=False) for v in _voice(rng, alice, 20, 0.3))
    kept = len(checks.same)
    assert kept == 20
    assert checks.changed(_voice(rng, bob, 1, 0.3)[0], reembedded=False)
    assert len(checks.same) == kept  # the other voice's window joins nothing


def test_confirmations_need_mismatches_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(change, "CHANGE_CONFIRMATIONS", 2)
    rng = np.random.default_rng(2)
    alice, bob = rng.standard_normal(64), rng.standard_normal(64)
    checks = VoiceChecks()
    for v in _voice(rng, alice, 10, 0.3):
        checks.changed(v, reembedded=False)
    other = _voice(rng, bob, 2, 0.3)
    assert not checks.changed(other[0], reembedded=False)
    assert checks.misses == 1
    assert not checks.changed(_voice(rng, alice, 1, 0.3)[0], reembedded=False)  # back: reset
    assert checks.misses == 0
    assert not checks.changed(other[0], reembedded=False)
    assert checks.changed(other[1], reembedded=False)


def test_reembedded_windows_use_their_own_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(change, "CHANGE_DROP", 0.01)
    monkeypatch.setattr(change, "CHANGE_DROP_REEMBEDDED", 10.0)  # never reached
    rng = np.random.default_rng(3)
    alice, bob = rng.standard_normal(64), rng.standard_normal(64)
    a, b = VoiceChecks(), VoiceChecks()
    for v in _voice(rng, alice, 10, 0.3):
        a.changed(v, reembedded=False)
        b.changed(v, reembedded=True)
    probe = _voice(rng, bob, 1, 0.3)[0]
    assert a.changed(probe, reembedded=False)
    assert not b.changed(probe, reembedded=True)
