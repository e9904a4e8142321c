"""A small embedding driver for testing one SpeakerEncoder family without the engine:
decode -> encoder.resample -> encoder.prepare -> batched encoder.encode -> L2 normalise.

The engine (speakerdb.model embedder) adds speech checks, threads and devices; here every
step runs in the calling thread so that a test sees the family's own behaviour. Batches hold
chunks of equal length only when the encoder says padding changes results
(``exact_padding=False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speakerdb.model._audio import decode_file


def decode(path: Path) -> tuple[np.ndarray, int]:
    """(n,) float32 mono (channels averaged) at the file's own rate, and that rate."""
    data, rate = decode_file(Path(path))
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def prepare_file(encoder, path: Path) -> list[torch.Tensor]:
    samples, rate = decode(path)
    return encoder.prepare(encoder.resample(samples, rate))


def encode_chunks(encoder, chunks: list[torch.Tensor]) -> torch.Tensor:
    """Chunks (each (T_i, F)) -> (len(chunks), D): one padded batch."""
    lengths = torch.tensor([c.shape[0] for c in chunks], dtype=torch.int64)
    batch = torch.zeros(len(chunks), int(lengths.max()), chunks[0].shape[1])
    for i, chunk in enumerate(chunks):
        batch[i, : chunk.shape[0]] = chunk
    return encoder.encode(batch, lengths).float().cpu()


def embed_prepared(encoder, prepared: list[list[torch.Tensor]], batch_size: int = 1) -> np.ndarray:
    """Per-recording chunk lists -> (N, D) float32 unit-norm embeddings.

    batch_size > 1 batches chunks of different recordings together (sorted by length, equal
    lengths only when ``encoder.exact_padding`` is False)."""
    flat = [(i, c) for i, chunks in enumerate(prepared) for c in chunks]
    outputs: list[torch.Tensor | None] = [None] * len(flat)
    order = sorted(range(len(flat)), key=lambda j: flat[j][1].shape[0])
    start = 0
    while start < len(order):
        stop = start + 1
        while (
            stop < len(order)
            and stop - start < batch_size
            and (
                encoder.exact_padding
                or flat[order[stop]][1].shape[0] == flat[order[start]][1].shape[0]
            )
        ):
            stop += 1
        group = order[start:stop]
        out = encode_chunks(encoder, [flat[j][1] for j in group])
        for row, j in enumerate(group):
            outputs[j] = out[row]
        start = stop
    dim = int(outputs[0].shape[0]) if outputs else 0
    sums = torch.zeros(len(prepared), dim, dtype=torch.float64)
    for (i, _), out in zip(flat, outputs, strict=True):
        sums[i] += out.double()
    sums /= sums.norm(dim=1, keepdim=True)
    return sums.float().numpy()


def embed_files(encoder, paths: list[Path], batch_size: int = 1) -> np.ndarray:
    """(N, D) float32 unit-norm embeddings of ``paths``."""
    return embed_prepared(encoder, [prepare_file(encoder, p) for p in paths], batch_size)
