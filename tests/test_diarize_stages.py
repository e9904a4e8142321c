"""Diarization's stages one by one: the trained speech detector (silero-vad run from its
weights), spectral clustering that finds the number of voices, and DER's components.

The pipeline end to end (CLI, naming, databases) is tests/test_diarize.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from helpers import ROOT, require_data
from speakerdb.diarize import RttmTurn, read_rttm
from speakerdb.diarize._evaluate import score_diarization
from speakerdb.diarize._silero import (
    CHUNK_SAMPLES,
    CONTEXT_SAMPLES,
    SileroVAD,
    read_initializers,
    silero_weights_path,
)
from speakerdb.diarize._spectral import spectral_clusters
from speakerdb.diarize._speech import FRAME_SECONDS, SpeechDetector, SpeechSettings, speech_mask
from speakerdb.errors import ModelError, UsageError

PYANNOTE_SAMPLE = ROOT / "tests" / "fixtures" / "pyannote_sample"


def _probabilities(samples: np.ndarray, block: int) -> np.ndarray:
    detector = SpeechDetector()
    parts = [detector.push(samples[i : i + block]) for i in range(0, samples.size, block)]
    return np.concatenate([*parts, detector.finish()])


def _sample() -> np.ndarray:
    samples, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    assert rate == 16000
    return samples


# --- speech detection -------------------------------------------------------------------------


def test_our_network_gives_the_probabilities_of_silero_s_own_onnx_graph():
    """The same weights run by onnxruntime through the package's graph (the reference) and
    by our torch code, chunk by chunk with the state carried over."""
    ort = pytest.importorskip("onnxruntime")
    samples = _sample()[16000 * 4 : 16000 * 12]
    n = samples.size // CHUNK_SAMPLES
    padded = np.concatenate([np.zeros(CONTEXT_SAMPLES, np.float32), samples])
    chunks = np.stack(
        [padded[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES + CONTEXT_SAMPLES] for i in range(n)]
    )
    session = ort.InferenceSession(str(silero_weights_path()), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    expected = []
    for chunk in chunks:
        out, state = session.run(
            None, {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)}
        )
        expected.append(float(out.ravel()[0]))
    ours, _ = SileroVAD.shared().probabilities(chunks, None)
    assert np.abs(ours - np.array(expected)).max() < 1e-4
    assert (np.array(expected) > 0.5).any() and (np.array(expected) < 0.5).any()


def test_streaming_in_blocks_gives_the_probabilities_of_one_pass():
    samples = _sample()[: 16000 * 8]
    whole = _probabilities(samples, samples.size)
    assert whole.size == -(-samples.size // CHUNK_SAMPLES)
    np.testing.assert_allclose(_probabilities(samples, 7001), whole, atol=1e-5)


def test_speech_is_found_where_people_speak_and_not_in_silence_or_noise():
    """On the pyannote sample (real telephone speech, reference RTTM): reference speech is
    mostly speech and the first second before anyone speaks is not; noise and a hum alone
    give no speech."""
    samples = _sample()
    mask = speech_mask(_probabilities(samples, 16000 * 5))
    times = (np.arange(mask.size) + 0.5) * FRAME_SECONDS
    talking = np.zeros(mask.size, dtype=bool)
    for turn in read_rttm(PYANNOTE_SAMPLE / "sample.rttm"):
        talking |= (times >= turn.start + 0.2) & (times < turn.end - 0.2)
    assert mask[talking].mean() >= 0.9
    quiet = times < min(t.start for t in read_rttm(PYANNOTE_SAMPLE / "sample.rttm")) - 0.2
    assert quiet.any() and mask[quiet].mean() <= 0.1
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.normal(size=16000 * 4)).astype(np.float32)
    hum = (0.3 * np.sin(2 * np.pi * 50 * np.arange(16000 * 4) / 16000)).astype(np.float32)
    for signal in (noise, hum):
        assert not speech_mask(_probabilities(signal, 16000)).any()


def test_hysteresis_keeps_quiet_ends_of_words_and_drops_blips():
    p = np.array([0.1] * 10 + [0.4, 0.6, 0.9, 0.4, 0.3] + [0.1] * 10 + [0.45] * 3 + [0.1] * 5)
    settings = SpeechSettings(onset=0.5, offset=0.35, min_pause=0.0, min_speech=0.0)
    mask = speech_mask(p.astype(np.float32), settings)
    # 0.4 on both sides of the peak stays; 0.3 ends it; 0.45 never reaches the onset.
    assert np.flatnonzero(mask).tolist() == [10, 11, 12, 13]
    with pytest.raises(UsageError):
        SpeechSettings(onset=0.3, offset=0.5).check()


def test_a_file_that_is_not_silero_s_weights_is_a_model_error(tmp_path):
    bad = tmp_path / "silero.onnx"
    bad.write_bytes(silero_weights_path().read_bytes()[:5000])
    with pytest.raises(ModelError):
        read_initializers(bad)


# --- spectral clustering ------------------------------------------------------------------------


def _voices(sizes, spread=0.5, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    rows, truth = [], []
    for i, n in enumerate(sizes):
        noise = spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
        rows.append(centres[i] / np.linalg.norm(centres[i]) + noise)
        truth += [i] * n
    vectors = np.concatenate(rows)
    order = rng.permutation(len(truth))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True))[order]
    return vectors.astype(np.float32), [truth[i] for i in order]


@pytest.mark.parametrize("sizes", [[40, 25], [30, 20, 25], [20, 30, 15, 25, 20]])
def test_spectral_clustering_finds_how_many_voices_there_are(sizes):
    vectors, truth = _voices(sizes)
    got = spectral_clusters(vectors).tolist()
    pairs = set(zip(got, truth, strict=True))
    assert len(set(got)) == len(sizes) and len(pairs) == len(sizes)


def test_spectral_clustering_honours_bounds_on_the_number_of_voices():
    vectors, _ = _voices([30, 20, 25])
    assert len(set(spectral_clusters(vectors, max_clusters=2).tolist())) == 2
    assert len(set(spectral_clusters(vectors, min_clusters=4).tolist())) == 4


@pytest.mark.parametrize(
    ("folder", "name", "audio"),
    [("conversations", "conv02", "conv02.flac"), ("conversations-8k", "conv05", "conv05.wav")],
)
def test_the_number_of_voices_of_real_conversations_is_found(model, folder, name, audio):
    """Nobody tells the pipeline how many people speak (4 in the 16 kHz conversation, 3 in
    the 8 kHz phone one)."""
    from speakerdb.diarize import diarize

    base = require_data() / folder
    reference = read_rttm(base / f"{name}.rttm")
    result = diarize(base / audio, model)
    assert result.num_speakers == len({t.speaker for t in reference})
    score = score_diarization(reference, result.rttm_turns(name), duration=result.duration)
    assert score.der <= 0.10


# --- DER components ------------------------------------------------------------------------------


def test_der_is_missed_plus_false_alarm_plus_confusion():
    """Hand-computed: A speaks 0-10 s and B 10-20 s; the hypothesis stops A at 8 s (2 s
    missed), gives 15-20 s to A's label (5 s confusion) and invents 20-23 s (3 s false
    alarm)."""
    reference = [RttmTurn("f", 0, 10, "A"), RttmTurn("f", 10, 10, "B")]
    hypothesis = [
        RttmTurn("f", 0, 8, "x"),
        RttmTurn("f", 10, 5, "y"),
        RttmTurn("f", 15, 5, "x"),
        RttmTurn("f", 20, 3, "x"),
    ]
    score = score_diarization(reference, hypothesis, collar=0.0, duration=25.0)
    assert (score.total, score.missed, score.false_alarm, score.confusion) == pytest.approx(
        (20.0, 2.0, 3.0, 5.0)
    )
    d = score.to_dict()
    assert d["der"] == pytest.approx(d["missed"] + d["false_alarm"] + d["confusion"])
    assert d["der"] == pytest.approx(0.5)


def test_real_conversation_without_the_number_of_speakers(model):
    """pyannote's sample (real, spontaneous, turns of 1-4 s): nobody says there are two
    voices; the two are found and the turns follow the reference (the number given or not,
    the bound is the one tests/test_diarize.py holds with two voices asked for)."""
    from speakerdb.diarize import diarize

    result = diarize(PYANNOTE_SAMPLE / "sample.wav", model)
    reference = read_rttm(PYANNOTE_SAMPLE / "sample.rttm")
    assert result.num_speakers == len({t.speaker for t in reference}) == 2
    score = score_diarization(reference, result.rttm_turns("sample"), duration=30.0)
    assert score.der <= 0.15
