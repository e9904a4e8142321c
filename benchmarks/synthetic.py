"""Synthetic speaker voiceprints shaped like GE2E's, for scale benchmarks.

Real GE2E voiceprints are unit vectors with non-negative coordinates (a ReLU precedes the
normalisation; about 40 % are exactly zero), share a strong common direction, vary in a few
dozen effective dimensions, and cluster (accents, gender, recording conditions): impostor
cosines average about 0.55. This generator reproduces that: a sparse positive common
direction, speakers drawn around 512 cluster centres in a 32-dimensional subspace with
decaying variances, a little isotropic noise, ReLU, L2 normalisation. Probes of enrolled
speakers are noisy copies (cosine to their voiceprint about 0.85-0.92); probes of unknown
speakers are fresh draws from the same generator. Everything is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIM = 256


@dataclass
class VoiceprintGenerator:
    seed: int = 0
    clusters: int = 512
    rank: int = 32

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        mean = np.abs(rng.standard_normal(DIM)) * (rng.random(DIM) < 0.7)
        self.mean = mean / np.linalg.norm(mean)
        self.basis = np.linalg.qr(rng.standard_normal((DIM, self.rank)))[0]
        self.scales = 0.9 / np.sqrt(np.arange(1, self.rank + 1))
        self.centres = (
            rng.standard_normal((self.clusters, self.rank)) * self.scales * 0.7
        ) @ self.basis.T

    def raw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 256) float64 speakers before the ReLU and normalisation."""
        centres = self.centres[rng.integers(0, self.clusters, n)]
        own = (rng.standard_normal((n, self.rank)) * self.scales * 0.6) @ self.basis.T
        return self.mean + centres + own + 0.03 * rng.standard_normal((n, DIM))

    @staticmethod
    def finish(raw: np.ndarray) -> np.ndarray:
        x = np.maximum(raw, 0.0)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def speakers(
        self, n: int, seed: int = 1, chunk: int = 100_000, keep: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """n voiceprints (n, 256) float32, and the pre-ReLU form (float32) of the rows ``keep``
        (all rows when None) for making probes. Made chunk by chunk, so the peak memory is
        the voiceprints plus the kept rows (10 M speakers: 10 GB, not 40)."""
        rng = np.random.default_rng(seed)
        vectors = np.empty((n, DIM), np.float32)
        rows = np.arange(n) if keep is None else np.asarray(keep)
        kept = np.empty((len(rows), DIM), np.float32)
        for start in range(0, n, chunk):
            raw = self.raw(min(chunk, n - start), rng).astype(np.float32)
            vectors[start : start + len(raw)] = self.finish(raw)
            inside = (rows >= start) & (rows < start + len(raw))
            kept[inside] = raw[rows[inside] - start]
        return vectors, kept

    def probes_of(self, raw_rows: np.ndarray, seed: int = 2, noise: float = 0.15) -> np.ndarray:
        """Noisy recordings of known speakers, from their pre-ReLU rows."""
        rng = np.random.default_rng(seed)
        scale = noise * 4 * np.linalg.norm(raw_rows, axis=1, keepdims=True) / np.sqrt(DIM)
        return self.finish(raw_rows + scale * rng.standard_normal(raw_rows.shape))

    def unknown(self, n: int, seed: int = 3) -> np.ndarray:
        """Probes of speakers who are not enrolled."""
        return self.finish(self.raw(n, np.random.default_rng(seed)))
