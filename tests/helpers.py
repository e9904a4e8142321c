"""Shared helpers for the test-suite: where the development speech is, and how to make odd
and broken recordings out of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPEAKERDB_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
DATA_MISSING_REASON = (
    f"development speech not found at {DATA} (set SPEAKERDB_TEST_DATA, or run from a checkout "
    "beside ../shared/data)"
)


def have_data() -> bool:
    return (DATA / "librispeech" / "manifest.jsonl").is_file()


REQUIRE_DATA = os.environ.get("SPEAKERDB_REQUIRE_DATA") == "1"


def require_data() -> Path:
    """The development speech folder; skips the test where it is absent (a user's clone),
    fails it under SPEAKERDB_REQUIRE_DATA=1 (CI, which has it)."""
    if not have_data():
        if REQUIRE_DATA:
            pytest.fail(DATA_MISSING_REASON + " and SPEAKERDB_REQUIRE_DATA=1")
        pytest.skip(DATA_MISSING_REASON)
    return DATA


def manifest(name: str, file: str = "manifest.jsonl") -> list[tuple[Path, str]]:
    """(absolute path, speaker label) for every line of a dev-set manifest."""
    base = require_data() / name
    rows = []
    for line in (base / file).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            rows.append((base / item["audio_filepath"], str(item["label"])))
    return rows


def trials(name: str) -> list[tuple[int, Path, Path]]:
    base = require_data() / name
    out = []
    for line in (base / "trials.txt").read_text().splitlines():
        label, a, b = line.split()
        out.append((int(label), base / a, base / b))
    return out


def by_speaker(name: str) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path, label in manifest(name):
        groups.setdefault(label, []).append(path)
    return groups


def speech_sample(seconds: float | None = None) -> tuple[np.ndarray, int]:
    """A real utterance (mono float32 at 16 kHz), optionally cut to ``seconds``."""
    path = require_data() / "vctk" / "p225" / "p225_003.wav"
    samples, rate = sf.read(path, dtype="float32")
    if seconds is not None:
        samples = samples[: int(seconds * rate)]
    return samples, rate


def resample_to(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio), for making test files at other rates."""
    import torch
    import torchaudio

    out = torchaudio.functional.resample(torch.from_numpy(samples)[None], rate, new_rate)
    return out[0].numpy()


def write_aac(path: Path, samples: np.ndarray, rate: int, container: str = "mp4") -> Path:
    """Encode AAC with PyAV into ``path`` (whatever its extension)."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame_size = 1024
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        for start in range(0, len(pcm), frame_size):
            chunk = pcm[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def odd_but_valid_inputs(folder: Path) -> dict[str, Path]:
    """Real speech written in formats a careless loader gets wrong. All must be accepted."""
    samples, rate = speech_sample()
    files: dict[str, Path] = {}
    files["8-bit unsigned WAV"] = folder / "u8.wav"
    sf.write(files["8-bit unsigned WAV"], samples, rate, subtype="PCM_U8")
    six = np.stack(
        [resample_to(samples, rate, 48_000) * g for g in (1, 0.9, 0.8, 0.7, 0.6, 0.5)], 1
    )
    files["6-channel 48 kHz float WAV"] = folder / "six.wav"
    sf.write(files["6-channel 48 kHz float WAV"], six.astype(np.float32), 48_000, subtype="FLOAT")
    files["8 kHz WAV"] = folder / "narrow.wav"
    sf.write(files["8 kHz WAV"], resample_to(samples, rate, 8_000), 8_000)
    files["Ogg Vorbis"] = folder / "speech.ogg"
    sf.write(files["Ogg Vorbis"], samples, rate, format="OGG", subtype="VORBIS")
    files["384 kHz WAV"] = folder / "ultra.wav"
    sf.write(files["384 kHz WAV"], resample_to(samples, rate, 384_000), 384_000, subtype="PCM_24")
    files["AAC in a file named .mp3"] = write_aac(folder / "actually_aac.mp3", samples, rate)
    files["FLAC"] = folder / "speech.flac"
    sf.write(files["FLAC"], samples, rate, format="FLAC")
    files["24-bit stereo 44.1 kHz WAV"] = folder / "stereo.wav"
    st = resample_to(samples, rate, 44_100)
    sf.write(
        files["24-bit stereo 44.1 kHz WAV"], np.stack([st, st * 0.5], 1), 44_100, subtype="PCM_24"
    )
    return files


def broken_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Inputs that must be refused: name -> (path, expected error code)."""
    samples, rate = speech_sample()
    out: dict[str, tuple[Path, str]] = {}
    out["missing file"] = (folder / "does-not-exist.wav", "file_not_found")
    (folder / "a-directory.wav").mkdir()
    out["directory"] = (folder / "a-directory.wav", "unreadable")
    (folder / "empty.wav").write_bytes(b"")
    out["empty file"] = (folder / "empty.wav", "unreadable")
    (folder / "text.wav").write_text("this is not audio\n" * 200)
    out["text named .wav"] = (folder / "text.wav", "unreadable")
    (folder / "random.flac").write_bytes(np.random.default_rng(1).bytes(40_000))
    out["random bytes"] = (folder / "random.flac", "unreadable")
    good = folder / "good.wav"
    sf.write(good, samples, rate)
    data = good.read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    out["truncated WAV"] = (folder / "truncated.wav", "unreadable")
    (folder / "header-cut.wav").write_bytes(data[:30])
    out["WAV cut inside its header"] = (folder / "header-cut.wav", "unreadable")
    (folder / "header-only.wav").write_bytes(data[:44])
    out["WAV header without samples"] = (folder / "header-only.wav", "unreadable")
    flac = folder / "good.flac"
    sf.write(flac, samples, rate, format="FLAC")
    fdata = flac.read_bytes()
    (folder / "truncated.flac").write_bytes(fdata[: len(fdata) // 2])
    out["truncated FLAC"] = (folder / "truncated.flac", "unreadable")
    nan = samples.copy()
    nan[1000:1010] = np.nan
    sf.write(folder / "nan.wav", nan, rate, subtype="FLOAT")
    out["NaN samples"] = (folder / "nan.wav", "invalid")
    inf = samples.copy()
    inf[5000] = np.inf
    sf.write(folder / "inf.wav", inf, rate, subtype="FLOAT")
    out["Inf samples"] = (folder / "inf.wav", "invalid")
    sf.write(folder / "silence.wav", np.zeros(rate * 3, np.float32), rate)
    out["digital silence"] = (folder / "silence.wav", "no_speech")
    hum = 1e-4 * np.random.default_rng(2).standard_normal(rate * 3).astype(np.float32)
    sf.write(folder / "faint-noise.wav", hum, rate, subtype="FLOAT")
    out["faint noise, no speech"] = (folder / "faint-noise.wav", "no_speech")
    t = np.arange(3 * rate) / rate
    buzz = 0.3 * np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    sf.write(folder / "buzz.wav", buzz, rate)
    out["steady 200 Hz buzz"] = (folder / "buzz.wav", "no_speech")
    sweep = 0.5 * np.sin(2 * np.pi * (100 + 2000 * t / 3) * t).astype(np.float32)
    sf.write(folder / "sweep.wav", sweep, rate)
    out["frequency sweep"] = (folder / "sweep.wav", "no_speech")
    sf.write(folder / "short.wav", samples[int(0.5 * rate) : int(0.7 * rate)], rate)
    out["0.2 s of speech"] = (folder / "short.wav", "too_short")
    return out


# --- synthetic voiceprints for store tests -------------------------------------------------------


def fake_model(dimension: int = 16, name: str = "test-model", tag: str = "0"):
    from speakerdb._identity import ModelIdentity

    return ModelIdentity(name, tag * 64, dimension, 0.5)


def clustered_vectors(n: int, dimension: int, seed: int = 0) -> np.ndarray:
    """(n, dimension) float32 unit vectors around 40 random centres: voiceprints with the
    clumpy structure approximate indexes are built for."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dimension))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dimension))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bulk_enroll(store, vectors: np.ndarray, model, start: int = 0) -> None:
    """Enroll one speaker per row of ``vectors`` (names s000000..., fake audio hashes),
    1000 per transaction."""
    from speakerdb.storage._records import EnrollRequest, NewUtterance

    requests = [
        EnrollRequest(f"s{start + i:06d}", [NewUtterance(v, f"{start + i:064x}", None, 3.0, 3.0)])
        for i, v in enumerate(vectors)
    ]
    for begin in range(0, len(requests), 1000):
        store.enroll_many(requests[begin : begin + 1000], model)


def fake_utterance(rng: np.random.Generator, dimension: int = 16, centre=None, spread=0.3):
    """A unit vector (near ``centre`` if given) with a unique fake audio hash."""
    import hashlib

    from speakerdb.storage._records import NewUtterance

    vector = rng.standard_normal(dimension)
    if centre is not None:
        vector = centre + spread * vector / np.sqrt(dimension)
    vector = (vector / np.linalg.norm(vector)).astype(np.float32)
    digest = hashlib.sha256(rng.bytes(16)).hexdigest()
    return NewUtterance(vector, digest, f"/audio/{digest[:8]}.wav", 3.0, 2.5)
