"""Shared checks of a model family against the reference embeddings its original framework
made (tests/fixtures/models/*/reference-*.npz, written by tools/parity/make_*_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from encoder_driver import embed_files
from parity_audio import REGENERATE_HINT, VARIANTS, Item, path_of, sha256_file


class Reference:
    """Reference embeddings: key -> unit vector, plus the derived-audio digests."""

    def __init__(self, npz: Path, array: str = "embeddings") -> None:
        with np.load(npz) as data:
            self.keys = [str(k) for k in data["keys"]]
            vectors = data[array].astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.index = {k: i for i, k in enumerate(self.keys)}
        meta = json.loads(npz.with_suffix(".json").read_text())
        self.derived_sha256: dict[str, str] = meta["derived_sha256"]
        self.meta = meta

    def items(self, variant: str, every: int = 1) -> list[Item]:
        """The reference's inputs of one variant (every n-th one)."""
        keys = [k for k in self.keys if k.endswith("|" + variant)]
        return [Item.from_key(k) for k in keys[::every]]

    def vector(self, item: Item) -> np.ndarray:
        return self.vectors[self.index[item.key]]


def input_paths(reference: Reference, items: list[Item], data: Path) -> list[Path]:
    """Files of ``items``; derived ones are made if missing and must match the digests the
    reference was made from (else the comparison would be meaningless)."""
    paths = []
    for item in items:
        path = path_of(item, data)
        if item.variant != "orig":
            expected = reference.derived_sha256[item.key]
            if sha256_file(path) != expected:
                pytest.fail(f"{path}: sha256 differs from the fixture's. {REGENERATE_HINT}")
        paths.append(path)
    return paths


def assert_parity(
    encoder, reference: Reference, data: Path, every: dict[str, int], label: str
) -> dict[str, tuple[float, float, int]]:
    """Embed each variant's inputs (every n-th) and compare with the reference: cosine
    >= 0.999 for every file and >= 0.9999 on average, per variant. Returns
    variant -> (min, mean, count) for the report.

    These families' front ends are well-conditioned (SpeechBrain's 80 dB floor, WeSpeaker's
    fbank on the 16-bit scale): across threads, kernels, FFT rounding and resampler engines
    every input moved by at most 1.2e-7 (docs/parity.md), so one bound serves every variant."""
    figures = {}
    for variant in VARIANTS:
        if variant not in every:
            continue
        items = reference.items(variant, every[variant])
        assert items, f"the reference has no {variant} inputs"
        ours = embed_files(encoder, input_paths(reference, items, data))
        expected = np.stack([reference.vector(i) for i in items])
        cos = (ours * expected).sum(axis=1)
        worst = int(np.argmin(cos))
        figures[variant] = (float(cos.min()), float(cos.mean()), len(items))
        print(f"{label} {variant}: {len(items)} files, min {cos.min():.7f}, mean {cos.mean():.7f}")
        assert cos.min() >= 0.999, f"{variant}: {items[worst].key} cosine {cos[worst]:.6f}"
        assert cos.mean() >= 0.9999, f"{variant}: mean cosine {cos.mean():.6f}"
    return figures


def assert_discriminative(reference: Reference) -> None:
    """The random-weight model must tell files apart, or parity would prove little."""
    orig = [i for i, k in enumerate(reference.keys) if k.endswith("|orig")]
    vectors = reference.vectors[orig]
    cos = vectors @ vectors.T
    off = ~np.eye(len(orig), dtype=bool)
    assert cos[off].mean() < 0.9, f"reference embeddings are nearly identical ({cos[off].mean()})"
    assert cos[off].min() < 0.5
