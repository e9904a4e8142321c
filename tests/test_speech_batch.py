"""The speech detector batched across streams (speakerdb.diarize._speech_batch): silero run
over several streams' chunks in one pass gives each stream the probabilities and the state
it gets alone, and live sessions in concurrent threads share passes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf

from helpers import ROOT
from speakerdb.diarize._silero import CHUNK_SAMPLES, CONTEXT_SAMPLES, SileroVAD
from speakerdb.diarize._speech import SpeechDetector
from speakerdb.diarize._speech_batch import BatchedSpeechNet

SAMPLE = ROOT / "tests" / "fixtures" / "pyannote_sample" / "sample.wav"
# Float rounding of a batched matrix product against a single one; loose enough for any CPU.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    samples, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == 16000
    return samples


def _chunks(samples: np.ndarray, first: int, count: int) -> np.ndarray:
    """``count`` consecutive (576,) context + chunk rows from chunk ``first`` on."""
    starts = (first + np.arange(count)) * CHUNK_SAMPLES
    return samples[starts[:, None] + np.arange(CHUNK_SAMPLES + CONTEXT_SAMPLES)]


def test_one_pass_over_several_streams_gives_each_its_own_probabilities_and_state(audio):
    """Five streams at different places of real telephone speech, of different lengths
    (1 to 9 chunks a round, some ending before others), some starting fresh and some with a
    carried state, over four rounds: the batched pass and separate passes agree."""
    net = SileroVAD.shared()
    rng = np.random.default_rng(7)
    offsets = [0, 150, 330, 560, 800]  # chunk positions (32 ms each): speech and pauses
    alone: list = [None] * len(offsets)
    together: list = [None] * len(offsets)
    done = [0] * len(offsets)
    seen_speech = seen_silence = False
    for round_ in range(4):
        streams = []
        for i, offset in enumerate(offsets):
            if round_ == 0 and i % 2:  # these streams start a round late: fresh state later
                continue
            count = int(rng.integers(1, 10))
            streams.append((i, _chunks(audio, offset + done[i], count)))
            done[i] += count
        answers = net.probabilities_many([(chunks, together[i]) for i, chunks in streams])
        for (i, chunks), (probs, state) in zip(streams, answers, strict=True):
            want, alone[i] = net.probabilities(chunks, alone[i])
            assert probs.shape == want.shape == (chunks.shape[0],)
            assert np.abs(probs - want).max() < TOLERANCE
            for got_part, want_part in zip(state, alone[i], strict=True):
                assert got_part.shape == want_part.shape == (1, 1, 128)
                assert float((got_part - want_part).abs().max()) < TOLERANCE
            together[i] = state
            seen_speech |= bool((want > 0.5).any())
            seen_silence |= bool((want < 0.5).any())
    assert seen_speech and seen_silence  # the streams carried both kinds of frame


def test_an_empty_stream_is_refused():
    net = SileroVAD.shared()
    with pytest.raises(ValueError):
        net.probabilities_many([(np.zeros((0, 576), np.float32), None)])
    with pytest.raises(ValueError):
        BatchedSpeechNet(net).probabilities(np.zeros((0, 576), np.float32), None)
    assert net.probabilities_many([]) == []


def test_threads_streaming_through_one_batched_net_get_what_each_gets_alone(audio):
    """Eight detectors in eight threads, each streaming its own stretch of the recording in
    blocks of its own size (some not a whole number of frames), all through one
    BatchedSpeechNet: each gets the probabilities a detector of its own gives, and the
    threads' calls shared passes."""
    batched = BatchedSpeechNet(SileroVAD.shared())
    sizes = [1600, 1600, 800, 4000, 2205, 1600, 3001, 512]
    starts = [i * 16000 * 3 for i in range(len(sizes))]
    seconds = 6

    def stream(detector: SpeechDetector, i: int) -> np.ndarray:
        part = audio[starts[i] : starts[i] + 16000 * seconds]
        size = sizes[i]
        out = [detector.push(part[k : k + size]) for k in range(0, part.size, size)]
        return np.concatenate([*out, detector.finish()])

    alone = [stream(SpeechDetector(), i) for i in range(len(sizes))]
    got: list = [None] * len(sizes)
    barrier = threading.Barrier(len(sizes))
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            detector = SpeechDetector(batched)
            barrier.wait()
            got[i] = stream(detector, i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for want, have in zip(alone, got, strict=True):
        assert have.shape == want.shape
        assert np.abs(have - want).max() < TOLERANCE
    # every block of a frame or more is a call; concurrent ones went through together
    assert batched.calls >= sum(16000 * seconds // s for s in sizes if s >= CHUNK_SAMPLES)
    assert batched.passes < batched.calls


class _FailsOnce:
    """A network whose first pass fails."""

    def __init__(self) -> None:
        self.failed = False

    def probabilities_many(self, streams):
        if not self.failed:
            self.failed = True
            raise RuntimeError("broken pass")
        return SileroVAD.shared().probabilities_many(streams)


def test_a_failed_pass_is_raised_to_its_caller_and_the_next_pass_runs(audio):
    batched = BatchedSpeechNet(_FailsOnce())  # type: ignore[arg-type]
    chunks = _chunks(audio, 300, 3)
    with pytest.raises(RuntimeError, match="broken pass"):
        batched.probabilities(chunks, None)
    probs, _ = batched.probabilities(chunks, None)
    want, _ = SileroVAD.shared().probabilities(chunks, None)
    assert np.abs(probs - want).max() < TOLERANCE
