"""A live session's window embeddings (speakerdb.live._windows): each speech window encoded
once, their mean close to the engine's embedding of the same speech, decisions still the
engine's, and a server's batcher encoding many sessions' windows as each alone would be."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch

import speakerdb.live._windows as live_windows
from speakerdb import SpeakerDB
from speakerdb.live import DecisionEvent, SpeakerChange
from speakerdb.live._windows import (
    WINDOW_HOP_SAMPLES,
    WINDOW_SAMPLES,
    SegmentWindows,
    window_encoder,
    window_features,
)
from speakerdb.service._batcher import BatchingEmbedder
from tests.helpers import by_speaker

FRAME = 512  # the speech detector's frame (32 ms at 16 kHz)


def read(path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return samples


def pushed(model, samples: np.ndarray) -> SegmentWindows:
    stream = SegmentWindows(window_encoder(model), keep_seconds=600)
    for first in range(0, samples.size - FRAME + 1, FRAME):
        stream.push(samples[first : first + FRAME], first / 16000)
    return stream


@pytest.fixture(scope="module")
def files():
    groups = by_speaker("librispeech")
    return [read(groups[name][k]) for name in ("1688", "1998", "2033") for k in (0, 6)]


def test_each_window_is_encoded_once_as_the_encoder_encodes_it_alone(model, files):
    samples = files[0]
    stream = pushed(model, samples)
    usable = (samples.size // FRAME) * FRAME
    expected = 1 + (usable - WINDOW_SAMPLES) // WINDOW_HOP_SAMPLES
    assert stream.encoded == len(stream.vectors) == expected
    for k in (0, expected // 2, expected - 1):
        start = k * WINDOW_HOP_SAMPLES
        alone = model.encode_windows(window_features(samples[start : start + WINDOW_SAMPLES])[None])
        time, vector = stream.vectors[k]
        assert time == pytest.approx(start / 16000)
        np.testing.assert_allclose(vector, alone[0], atol=1e-5)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_the_mean_of_the_windows_is_close_to_the_engines_embedding(model, files):
    # Measured on 14 read and 14 phone recordings: cosine 0.946-0.996 (windows normalised
    # on their own volume, no WebRTC trimming): an estimate, never the decision itself.
    for samples in files:
        offline = model.embed([samples], sample_rate=16000)[0].vector
        assert float(pushed(model, samples).mean() @ offline) >= 0.9


def test_a_session_decides_as_re_embedding_does_with_far_fewer_embeddings(
    sqlite_url, model, monkeypatch
):
    groups = by_speaker("librispeech")
    probe = read(groups["2033"][0])  # one voice
    with SpeakerDB.open(sqlite_url, model=model) as db:
        db.enroll("2033", groups["2033"][3:6])
        answers = {}
        for mode in ("windows", "re-embedding"):
            if mode == "re-embedding":  # the path of models without window embeddings
                monkeypatch.setattr(live_windows, "window_encoder", lambda model: None)
            with db.session(speaker="2033") as session:
                events = []
                for first in range(0, probe.size, 1600):
                    events += session.feed(probe[first : first + 1600], sample_rate=16000)
                summary = session.close()
            answers[mode] = (events, summary, session.exact_judgements)
    (events, summary, exact), (old_events, old_summary, old_exact) = answers.values()
    decided = [e for e in events if isinstance(e, DecisionEvent)]
    assert decided == [e for e in old_events if isinstance(e, DecisionEvent)]
    assert summary.decisions == old_summary.decisions and summary.accepted
    assert not any(isinstance(e, SpeakerChange) for e in events + old_events)
    # The engine embeds the segment only while undecided and at close; re-embedding, at
    # every re-scoring and every change check as well.
    # Here: the re-scorings before the decision, the one that decided, and close.
    undecided = sum(1 for e in events if e.type == "progress" and e.status == "NOT_ENOUGH_SPEECH")
    assert exact == undecided + 2
    assert 2 * exact < old_exact


def test_the_batcher_encodes_many_sessions_windows_as_each_alone(model, files):
    windows = [
        torch.stack([window_features(s[k : k + WINDOW_SAMPLES]) for k in (0, WINDOW_HOP_SAMPLES)])
        for s in files
    ]
    alone = [model.encode_windows(w) for w in windows]
    batcher = BatchingEmbedder(model)
    try:
        got: dict[int, np.ndarray] = {}
        start = threading.Barrier(len(windows))

        def ask(i: int) -> None:
            start.wait()
            for _ in range(5):
                got[i] = batcher.encode_windows(windows[i])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(windows))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher.close()
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(got[i], expected, atol=1e-5)
