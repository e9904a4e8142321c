"""The parity inputs: which development recordings, and how the 8 kHz, 48 kHz and MP3 versions
of them are made.

Used by the reference script (in NeMo's own environment) and by the tests (in speakerdb's), so
both see byte-identical inputs: every derived file's sha256 is recorded with the reference
embeddings and checked before use. Needs only numpy, soundfile (libsndfile with MP3) and soxr;
the pinned versions are in setup_reference_env.sh.

Derived audio is written to a cache folder, never into the repository: the development data is
not ours to redistribute.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "MANIFESTS",
    "SOURCE_RATE",
    "VARIANTS",
    "default_soxr_engine",
    "derive",
    "derived_path",
    "reference_items",
    "sha256_file",
]

# (set folder, manifest file): every manifest of the four speech sets.
MANIFESTS: tuple[tuple[str, str], ...] = (
    ("librispeech", "manifest.jsonl"),
    ("librispeech", "singles.jsonl"),
    ("vctk", "manifest.jsonl"),
    ("arabic-commands", "manifest.jsonl"),
    ("telephone", "manifest.jsonl"),
)
# "orig" is the file as it is; the others are derived from the 16 kHz originals only (the
# telephone set is already 8 kHz mu-law).
VARIANTS: tuple[str, ...] = ("orig", "8k", "48k", "mp3")
SOURCE_RATE = 16_000
_RATES = {"8k": 8_000, "48k": 48_000}


_SOXR_ENGINE_VARIABLES = ("SOXR_USE_SIMD", "SOXR_USE_SIMD32", "SOXR_USE_SIMD64")


@contextlib.contextmanager
def default_soxr_engine() -> Iterator[None]:
    """libsoxr's own choice of engine while inside: SOXR_USE_SIMD* unset.

    On x86-64, libsoxr runs "HQ" with its SSE single-precision engine (cr32s) on every CPU
    (no run-time dispatch for it); only these variables (read when a resampler is created)
    select the plain C one, whose rounding differs and flips 16-bit samples of the derived
    files. The references record the digests of the default engine's files.
    """
    saved = {name: os.environ.pop(name) for name in _SOXR_ENGINE_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def reference_items(data: Path) -> list[tuple[str, str]]:
    """(set, path relative to the set folder) of every manifest line, in manifest order."""
    items = []
    for folder, manifest in MANIFESTS:
        for line in (data / folder / manifest).read_text().splitlines():
            if line.strip():
                items.append((folder, str(json.loads(line)["audio_filepath"])))
    return items


def derived_path(cache: Path, folder: str, relpath: str, variant: str) -> Path:
    suffix = ".mp3" if variant == "mp3" else ".wav"
    return (cache / variant / folder / relpath).with_suffix(suffix)


def derive(source: Path, variant: str, target: Path) -> Path:
    """Write ``variant`` of the 16 kHz recording ``source`` to ``target`` (deterministic).

    8k / 48k: soxr "HQ" resampling of the float64 samples, then 16-bit PCM WAV (rounded and
    clipped here, so that libsndfile's float-to-int rules play no part). mp3: libsndfile's LAME
    encoder at the source rate with its default settings.
    Raises ValueError for a source that is not 16 kHz mono or an unknown variant.
    """
    samples, rate = sf.read(source, dtype="float64", always_2d=False)
    if rate != SOURCE_RATE or samples.ndim != 1:
        raise ValueError(f"{source}: expected 16 kHz mono, got {rate} Hz, shape {samples.shape}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a concurrent reader never sees half.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    if variant in _RATES:
        with default_soxr_engine():
            out = soxr.resample(samples, SOURCE_RATE, _RATES[variant], quality="soxr_hq")
        pcm = np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)
        sf.write(partial, pcm, _RATES[variant], format="WAV", subtype="PCM_16")
    elif variant == "mp3":
        sf.write(partial, samples, SOURCE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        raise ValueError(f"unknown variant {variant!r}")
    os.replace(partial, target)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
