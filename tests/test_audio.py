"""The audio front end: odd but valid recordings decode, broken ones raise typed errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import broken_inputs, odd_but_valid_inputs, require_data, resample_to, speech_sample
from speakerdb.errors import (
    AudioDecodeError,
    AudioError,
    InvalidAudioError,
    NoSpeechError,
)
from speakerdb.model._audio import SAMPLE_RATE, load_audio
from speakerdb.model._utterance import MIN_SPEECH_SECONDS, prepare_utterance


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    require_data()
    return odd_but_valid_inputs(tmp_path_factory.mktemp("odd"))


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    require_data()
    return broken_inputs(tmp_path_factory.mktemp("broken"))


def test_odd_but_valid_inputs_embed_close_to_the_original(odd_files, model):
    samples, rate = speech_sample()
    reference = model.get_embedding(samples, sample_rate=rate)
    for kind, path in odd_files.items():
        vector = model.get_embedding(path)
        assert vector.shape == (256,) and vector.dtype == np.float32, kind
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5), kind
        # Same voice, same words: codecs and resampling move the vector only a little;
        # telephone bandwidth (nothing above 4 kHz) moves it more.
        floor = 0.8 if "8 kHz" in kind else 0.95
        assert float(vector @ reference) > floor, kind


def test_every_broken_input_is_a_typed_error(broken_files):
    for kind, (path, code) in broken_files.items():
        with pytest.raises(AudioError) as info:
            prepare_utterance(path)
        assert info.value.code == code, f"{kind}: {info.value}"
        message = str(info.value)
        assert "\n" not in message and str(path) in message, kind


def _unprivileged(call) -> str:
    """``call()`` in a forked child that gave up root for the user nobody: "ok", or the type
    and message of what it raised."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        outcome = "child failed"
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            call()
            outcome = "ok"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, outcome.encode()[:4000])
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


def test_unreadable_permissions(tmp_path):
    samples, rate = speech_sample()
    path = tmp_path / "locked.wav"
    sf.write(path, samples, rate)
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(AudioDecodeError, match="permission denied"):
            load_audio(path)
        return
    # Root reads anything (and CI runs as root): the same read as an unprivileged user, from
    # a folder it may enter (pytest's are root's alone), so that the file's mode refuses it.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="speakerdb-locked-") as folder:
        os.chmod(folder, 0o755)
        path = Path(folder) / "locked.wav"
        sf.write(path, samples, rate)
        path.chmod(0)
        outcome = _unprivileged(lambda: load_audio(path))
    assert outcome.startswith("AudioDecodeError: ") and "permission denied" in outcome, outcome
    assert str(path) in outcome


def test_mp4_without_audio_stream(tmp_path):
    import av

    path = tmp_path / "video-only.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 32, 32
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio(path)


def test_same_audio_in_two_containers_has_one_digest(tmp_path):
    samples, rate = speech_sample()
    sf.write(tmp_path / "a.wav", samples, rate, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", samples, rate, format="FLAC", subtype="PCM_16")
    assert load_audio(tmp_path / "a.wav").sha256 == load_audio(tmp_path / "a.flac").sha256


def test_arrays_integer_float_channels_and_rates():
    samples, rate = speech_sample()
    as_int16 = (samples * 32767).astype(np.int16)
    a = load_audio(samples, sample_rate=rate)
    b = load_audio(as_int16, sample_rate=rate)
    assert np.allclose(a.samples, b.samples, atol=1e-4)
    stereo = np.stack([samples, samples], axis=1)
    assert np.allclose(load_audio(stereo, sample_rate=rate).samples, samples)
    torch_layout = stereo.T.copy()  # (channels, n)
    assert np.allclose(load_audio(torch_layout, sample_rate=rate).samples, samples)
    up = load_audio(resample_to(samples, rate, 48_000), sample_rate=48_000)
    assert abs(len(up.samples) - len(samples)) <= 2
    assert up.original_rate == 48_000


def test_array_inputs_need_a_sample_rate_in_range():
    samples, _ = speech_sample()
    with pytest.raises(InvalidAudioError, match="sample_rate"):
        load_audio(samples)
    with pytest.raises(InvalidAudioError, match="sample rate"):
        load_audio(samples, sample_rate=1000)
    with pytest.raises(InvalidAudioError):
        load_audio(np.zeros((2, 2, 2), np.float32), sample_rate=SAMPLE_RATE)


def test_noise_is_not_speech():
    rng = np.random.default_rng(0)
    with pytest.raises(NoSpeechError, match="noise-like"):
        prepare_utterance(
            0.3 * rng.standard_normal(3 * SAMPLE_RATE).astype(np.float32), SAMPLE_RATE
        )


def test_minimum_speech_is_at_most_half_a_second():
    assert MIN_SPEECH_SECONDS <= 0.5
    samples, rate = speech_sample()
    start = int(0.4 * rate)
    ok = prepare_utterance(samples[start : start + int(0.6 * rate)], rate)
    assert ok.speech_seconds >= MIN_SPEECH_SECONDS
