"""Bounded resources whatever the input (issue 10, defects 1-4): hostile sample rates,
headers claiming absurd lengths, very long recordings, and noise at any rate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import ROOT, manifest, require_data, speech_sample
from speakerdb.errors import NoSpeechError, TooLongError, UsageError
from speakerdb.model._utterance import prepare_utterance


def _peak_rss_mb(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` in a fresh interpreter; it prints one JSON object. Adds the child's
    peak resident memory (VmHWM, MB) as ``peak_mb``."""
    code = textwrap.dedent(script) + textwrap.dedent(
        """
        import json as _json
        # VmHWM: this process image's own peak. (ru_maxrss would include the peak of the
        # pytest process it was forked from: Linux carries it across exec.)
        with open("/proc/self/status") as _status:
            _hwm = next(line for line in _status if line.startswith("VmHWM:"))
        RESULT["peak_mb"] = int(_hwm.split()[1]) / 1024
        print(_json.dumps(RESULT))
        """
    )
    import os

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _speech_at(rate: int, seconds: float | None = None) -> np.ndarray:
    import soxr

    samples, original = speech_sample(seconds)
    return soxr.resample(samples, original, rate).astype(np.float32)


# --- defect 1: resampling cost bounded for any pair of rates ------------------------------------


def test_hostile_sample_rates_take_bounded_memory(tmp_path):
    """96 KB of 16-bit audio at 8001 Hz made torchaudio build a 16000 x 8000 kernel (4.9 GB);
    44 101 Hz one of 5.7 GB. Now: exact kernels only up to a bounded size, soxr past it."""
    require_data()
    paths = []
    for rate in (8001, 44101):
        path = tmp_path / f"speech-{rate}.wav"
        sf.write(path, _speech_at(rate)[:48_000], rate, subtype="PCM_16")
        paths.append(str(path))
    result = _peak_rss_mb(
        """
        import sys
        from speakerdb.model._utterance import prepare_utterance
        RESULT = {"speech": [prepare_utterance(p).speech_seconds for p in sys.argv[1:]]}
        """,
        *paths,
    )
    assert all(s > 0.5 for s in result["speech"]), result
    assert result["peak_mb"] < 1500, result


def test_no_large_kernel_is_built_or_cached():
    from speakerdb.model._resampling import (
        GE2E_RESAMPLING,
        MAX_KERNEL_TAPS,
        TORCHAUDIO_DEFAULT,
        _kernel,
        kernel_taps,
        resample,
    )

    _kernel.cache_clear()
    rng = np.random.default_rng(0)
    for rate in range(44_101, 44_121):  # 20 hostile rates, each with gcd 1 or close
        x = rng.standard_normal(rate // 10).astype(np.float32)
        for params in (GE2E_RESAMPLING, TORCHAUDIO_DEFAULT):
            y = resample(x, rate, 16_000, params)
            assert y.shape == (int(np.ceil(x.size * 16_000 / rate)),)
    info = _kernel.cache_info()
    assert info.currsize <= 8 and info.maxsize == 8
    for rate in (8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 96_000):
        assert kernel_taps(rate, 16_000, GE2E_RESAMPLING) <= MAX_KERNEL_TAPS


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("block", [None, 65_536])
def test_common_rates_resample_exactly_as_torchaudio(rate, block):
    """Families that follow torchaudio keep its exact output for common rates, whole or
    streamed in blocks."""
    import torch
    import torchaudio

    from speakerdb.model._resampling import GE2E_RESAMPLING, TORCHAUDIO_DEFAULT, resample

    x = np.random.default_rng(rate).standard_normal(rate * 12 + 17).astype(np.float32)
    for p in (GE2E_RESAMPLING, TORCHAUDIO_DEFAULT):
        expected = torchaudio.transforms.Resample(
            rate,
            16_000,
            lowpass_filter_width=p.lowpass_filter_width,
            rolloff=p.rolloff,
            resampling_method=p.resampling_method,
            beta=p.beta,
        )(torch.from_numpy(x)[None])[0].numpy()
        got = resample(x, rate, 16_000, p) if block is None else resample(x, rate, 16_000, p, block)
        assert np.array_equal(got, expected)


def test_hostile_rate_embeds_like_its_neighbour(model):
    """Past the kernel limit soxr resamples: the voiceprint stays that of the speech."""
    require_data()
    near = model.get_embedding(_speech_at(44_100), sample_rate=44_100)
    odd = model.get_embedding(_speech_at(44_101), sample_rate=44_101)
    assert float(near @ odd) > 0.995


# --- defect 2: headers claiming absurd lengths ---------------------------------------------------


def _flac_claiming(path: Path, samples: np.ndarray, rate: int, total: int) -> Path:
    """A valid FLAC whose STREAMINFO claims ``total`` samples (36-bit field)."""
    sf.write(path, samples, rate, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | (total & ((1 << 36) - 1))
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def test_enroll_refuses_a_flac_claiming_2_36_samples_and_enrolls_the_rest(tmp_path):
    """``enroll normal.wav hostile.flac --json`` died with MemoryError (no JSON, nothing
    enrolled); now the hostile file is refused with its own code and normal.wav enrolled."""
    from click.testing import CliRunner

    from speakerdb.cli import cli

    require_data()
    samples, rate = speech_sample()
    normal = tmp_path / "normal.wav"
    sf.write(normal, samples, rate)
    hostile = _flac_claiming(tmp_path / "hostile.flac", samples, rate, (1 << 36) - 1)
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = CliRunner().invoke(
        cli, ["enroll", "alice", str(normal), str(hostile), "--json", "--db", db]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert "too_long" in text, text
    listed = CliRunner().invoke(cli, ["speakers", "show", "alice", "--json", "--db", db])
    assert listed.exit_code == 0, listed.output
    assert '"normal.wav' in listed.stdout or "normal.wav" in listed.stdout


def test_declared_length_past_the_limit_is_refused_before_decoding(tmp_path):
    require_data()
    samples, rate = speech_sample()
    hostile = _flac_claiming(tmp_path / "hostile.flac", samples, rate, (1 << 36) - 1)
    with pytest.raises(TooLongError) as info:
        prepare_utterance(hostile)
    assert info.value.code == "too_long" and "limit" in str(info.value)


def test_streams_without_a_declared_length_stop_at_the_limit(tmp_path, monkeypatch):
    """A FLAC with no total (0 = unknown) and an MP3 are counted as they decode."""
    require_data()
    samples, rate = speech_sample()
    long = np.tile(samples, 4)  # about 4 x 2.6 s
    unknown = _flac_claiming(tmp_path / "unknown.flac", long, rate, 0)
    mp3 = tmp_path / "long.mp3"
    sf.write(mp3, long, rate, format="MP3")
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_SECONDS", str(len(long) / rate - 1))
    for path in (unknown, mp3):
        with pytest.raises(TooLongError):
            prepare_utterance(path)
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_SECONDS", str(len(long) / rate + 2))
    for path in (unknown, mp3):
        assert prepare_utterance(path).duration > 4


def test_the_limit_is_configurable_and_validated(model, monkeypatch):
    require_data()
    samples, rate = speech_sample()
    with pytest.raises(TooLongError):
        prepare_utterance(samples, rate, max_seconds=1.0)
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_SECONDS", "1")
    result = model.embed([samples], sample_rate=rate)[0]
    assert result.error is not None and result.error.code == "too_long"
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_SECONDS", "soon")
    with pytest.raises(UsageError, match="SPEAKERDB_MAX_AUDIO_SECONDS"):
        prepare_utterance(samples, rate)
    monkeypatch.delenv("SPEAKERDB_MAX_AUDIO_SECONDS")
    with pytest.raises(UsageError):
        model.max_audio_seconds = -1
    assert model.embed([samples], sample_rate=rate)[0].ok


# --- defect 3: memory bounded whatever the recording's length ------------------------------------


def _long_recording(path: Path, minutes: float, rate: int = 16_000) -> Path:
    """``minutes`` of real read speech (LibriSpeech files in a loop, short pauses between)."""
    files = [p for p, _ in manifest("librispeech")]
    target = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        written, i = 0, 0
        while written < target:
            x, r = sf.read(files[i % len(files)], dtype="float32")
            assert r == rate
            x = np.concatenate([x, np.zeros(rate // 2, np.float32)])[: target - written]
            out.write(x)
            written += x.size
            i += 1
    return path


def test_a_40_minute_recording_embeds_in_bounded_memory(tmp_path):
    """30 min at 16 kHz took 1.6 GB; the recording is now held once at 16 kHz and every
    intermediate (spectra, VAD, resampling, windows) is computed in chunks."""
    require_data()
    path = _long_recording(tmp_path / "long.wav", 40)
    result = _peak_rss_mb(
        """
        import sys
        from speakerdb import load_model
        e = load_model(device="cpu").embed([sys.argv[1]])[0]
        RESULT = {"ok": e.ok, "speech": e.speech_seconds, "duration": e.duration}
        """,
        str(path),
    )
    assert result["ok"] and result["duration"] == pytest.approx(2400, abs=1)
    # ~500 MB is torch and the model; measured 770 MB in all here (main: 1520 MB). The margin
    # covers allocator variance with the encoder threads.
    assert result["peak_mb"] < 1200, result


def test_streamed_embedding_equals_the_whole_array_one(model, monkeypatch, tmp_path):
    """The chunked paths (kept for long recordings) forced on a 90 s file give the embedding,
    duration, speech seconds and bandwidth of the whole-array computation."""
    require_data()
    path = tmp_path / "speech44k.wav"
    x = _long_recording(tmp_path / "ninety.wav", 1.5)
    audio, rate = sf.read(x, dtype="float32")
    import soxr

    sf.write(path, soxr.resample(audio, rate, 44_100), 44_100, subtype="FLOAT")
    whole = model.embed([path])[0]
    import speakerdb.model._preprocess as preprocess
    import speakerdb.model._resampling as resampling

    monkeypatch.setattr(preprocess, "EXACT_SAMPLES", 10_000)
    monkeypatch.setattr(preprocess, "_CHUNK_FRAMES", 333)
    monkeypatch.setattr(preprocess, "_CHUNK_WINDOWS", 77)
    monkeypatch.setattr(resampling, "_MIN_CALL", 4_000)
    monkeypatch.setattr(resampling, "_MAX_CALL", 9_000)
    streamed = model.embed([path])[0]
    assert float(whole.vector @ streamed.vector) >= 0.999
    assert streamed.duration == whole.duration
    assert streamed.speech_seconds == whole.speech_seconds
    assert streamed.bandwidth_hz == whole.bandwidth_hz


# --- defect 4: noise at every input rate ---------------------------------------------------------

RATES = [8_000, 16_000, 22_050, 44_100, 48_000]


@pytest.mark.parametrize("rate", RATES)
def test_white_noise_is_refused_at_every_rate(rate):
    """The flatness check ran on the 16 kHz signal, whose top the resampler had emptied, so
    10 s of white noise at 8 or 44.1 kHz passed as speech."""
    noise = 0.1 * np.random.default_rng(rate).standard_normal(10 * rate).astype(np.float32)
    with pytest.raises(NoSpeechError, match="noise-like"):
        prepare_utterance(noise, rate)


@pytest.mark.parametrize("rate", RATES)
def test_real_speech_is_accepted_at_every_rate(rate):
    require_data()
    for path, _ in manifest("vctk")[:3] + manifest("librispeech")[:2]:
        import soxr

        x, r = sf.read(path, dtype="float32")
        prepared = prepare_utterance(soxr.resample(x, r, rate).astype(np.float32), rate)
        assert prepared.speech_seconds > 1.0
