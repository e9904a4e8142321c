"""The audio of the model-family parity checks: every recording of the development manifests,
plus versions derived from the 16 kHz ones at 8 kHz, 48 kHz and in MP3.

Shared by the reference scripts (tools/parity/, run in the frameworks' environment) and the
tests (run without the frameworks), so both see byte-identical inputs. Derived files are made
deterministically (soxr at its default quality, 16-bit WAV; MP3 by libsndfile's LAME encoder)
into a cache directory outside the repository, and identified by their sha256: the fixtures
record the digests, and the tests refuse to compare embeddings of inputs that differ.

Needs only numpy, soundfile and soxr.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFESTS: dict[str, tuple[str, ...]] = {
    "librispeech": ("manifest.jsonl", "singles.jsonl"),
    "vctk": ("manifest.jsonl",),
    "arabic-commands": ("manifest.jsonl",),
    "telephone": ("manifest.jsonl",),
}
SIXTEEN_KHZ_SETS = ("librispeech", "vctk", "arabic-commands")
VARIANTS = ("orig", "8k", "48k", "mp3")
REGENERATE_HINT = (
    "derived parity audio differs from the fixture's (another soxr/libsndfile version?): "
    "regenerate the fixtures with tools/parity/make_speechbrain_reference.py and "
    "tools/parity/make_wespeaker_reference.py (see tools/parity/README.md)"
)


@dataclass(frozen=True)
class Item:
    """One parity input: a manifest recording (``set``/``relpath``) in one ``variant``."""

    set: str
    relpath: str
    variant: str

    @property
    def key(self) -> str:
        return f"{self.set}/{self.relpath}|{self.variant}"

    @staticmethod
    def from_key(key: str) -> Item:
        name, variant = key.rsplit("|", 1)
        set_name, relpath = name.split("/", 1)
        return Item(set_name, relpath, variant)


def cache_dir() -> Path:
    """Where derived audio goes: $SPEAKERDB_PARITY_CACHE or ~/.cache/speakerdb/parity."""
    env = os.environ.get("SPEAKERDB_PARITY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "speakerdb" / "parity"


def default_data(root: Path) -> Path:
    """The development speech: $SPEAKERDB_TEST_DATA, else ``shared/data`` beside the checkout."""
    env = os.environ.get("SPEAKERDB_TEST_DATA")
    return Path(env) if env else root.parent / "shared" / "data"


def recordings(data: Path) -> list[tuple[str, str]]:
    """(set, path relative to the set's folder) for every line of every manifest, in order."""
    out: list[tuple[str, str]] = []
    for name, files in MANIFESTS.items():
        for file in files:
            for line in (data / name / file).read_text().splitlines():
                if line.strip():
                    out.append((name, json.loads(line)["audio_filepath"]))
    return out


def items(data: Path, variants: tuple[str, ...] = VARIANTS) -> list[Item]:
    """Every parity input: each recording as it is, and the 16 kHz ones in each variant."""
    out: list[Item] = []
    for variant in variants:
        for name, rel in recordings(data):
            if variant == "orig" or name in SIXTEEN_KHZ_SETS:
                out.append(Item(name, rel, variant))
    return out


def subset(todo: list[Item], limit: int = 0, every: int = 1) -> list[Item]:
    """The first ``limit`` (0: all) of every ``every``-th item, per variant, in order."""
    out: list[Item] = []
    for variant in dict.fromkeys(i.variant for i in todo):
        chosen = [i for i in todo if i.variant == variant][::every]
        out.extend(chosen[:limit] if limit else chosen)
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def path_of(item: Item, data: Path, cache: Path | None = None) -> Path:
    """The file of ``item``, making the derived version first if it is not cached."""
    source = data / item.set / item.relpath
    if item.variant == "orig":
        return source
    cache = cache or cache_dir()
    suffix = ".mp3" if item.variant == "mp3" else ".wav"
    target = cache / item.variant / item.set / (item.relpath.rsplit(".", 1)[0] + suffix)
    if not target.is_file():
        _derive(source, target, item.variant)
    return target


def _derive(source: Path, target: Path, variant: str) -> None:
    import sys

    import numpy as np
    import soundfile as sf
    import soxr

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "parity"))
    from derived_audio import default_soxr_engine

    samples, rate = sf.read(source, dtype="float32")
    if rate != 16_000 or samples.ndim != 1:
        raise ValueError(f"{source}: expected mono 16 kHz audio to derive {variant} from")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    if variant in ("8k", "48k"):
        new_rate = 8_000 if variant == "8k" else 48_000
        # libsoxr's default engine whatever SOXR_USE_SIMD says: the fixtures hold its digests
        # (see tools/parity/derived_audio.default_soxr_engine).
        with default_soxr_engine():
            out = soxr.resample(samples, rate, new_rate).astype(np.float32)
        sf.write(partial, out, new_rate, subtype="PCM_16", format="WAV")
    elif variant == "mp3":
        sf.write(partial, samples, rate, format="MP3", subtype="MPEG_LAYER_III")
    else:
        raise ValueError(f"unknown variant {variant!r}")
    os.replace(partial, target)
