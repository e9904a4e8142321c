"""The one interface every model family implements for the embedding engine.

A family (ge2e, nemo, speechbrain, onnx) knows three things the engine does not: how its
original framework resamples audio, how it turns 16 kHz samples into features (its front
end), and how its network turns a batch of feature sequences into embeddings. The engine
(:mod:`speakerdb.model._embedder`) does everything else: decoding, speech checks, batching by
length, background threads, devices, L2 normalisation.

Data flow for one recording::

    decoded mono float32 at its own rate
      -> encoder.stream_resampler(rate)           block by block, (n,) float32 at 16 kHz
      -> speech checks (no speech, too short ...)  common to every family
      -> encoder.prepare(samples)                 list of chunks, each (T_i, F) float32
         (the volume-normalised speech left after silence trimming instead of the whole
         recording when the family sets ``uses_trimmed_speech``, as GE2E does)
      -> encoder.encode(batch, lengths)           chunks of several recordings, padded
      -> embedding = L2-normalise(sum of the recording's chunk outputs)

Most families give one chunk per recording (the whole utterance); GE2E gives its 1.6 s
windows, whose unit-norm embeddings are averaged.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["Resampling", "SpeakerEncoder"]

Resampling = tuple[
    Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    Callable[[], npt.NDArray[np.float32]],
]
"""``(feed, finish)``: ``feed(block)`` takes the next (k,) float32 block at the input rate
and returns the (m,) float32 output ready so far; ``finish()`` returns the rest."""


class SpeakerEncoder(abc.ABC):
    """A loaded speaker-embedding network with its front end.

    Attributes every implementation sets:
      family: "ge2e", "nemo", "speechbrain" or "onnx".
      dimension: D, the embedding size.
      sample_rate: Hz the front end expects (16 000 for every family so far).
      default_threshold: the original toolkit's default decision threshold, converted to a
        cosine score in [-1, 1]; ``threshold_note`` says where it comes from.
      weights_sha256: hex sha256 identifying the weights (of the file, or of a folder's
        model files in a fixed order).
      exact_padding: True when ``encode`` gives the same output for a chunk whatever padding
        the batch adds (masks everywhere); False when padding would change it (e.g. an ONNX
        graph without masks), so the engine only batches chunks of equal length.
      uses_trimmed_speech: True when ``prepare`` wants the volume-normalised speech left
        after silence trimming (GE2E's training recipe), False for the whole recording.
      cpu_batch_frames: at most this many padded frames per ``encode`` call on the CPU (a
        chunk longer than that still goes alone), or None for the engine's default
        (``batch_size`` x 160). Convolutional networks over whole recordings run slower per
        frame in big batches on a CPU: their activations no longer fit the caches.
    """

    family: ClassVar[str]
    dimension: int
    sample_rate: int = 16_000
    default_threshold: float
    threshold_note: str = ""
    weights_sha256: str
    exact_padding: bool = True
    uses_trimmed_speech: ClassVar[bool] = False
    cpu_batch_frames: ClassVar[int | None] = None

    @abc.abstractmethod
    def resample(self, samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
        """(n,) float32 mono at ``rate`` Hz -> (m,) float32 at :attr:`sample_rate`, the way
        the original framework resamples (a different resampler alone moves embeddings)."""

    def stream_resampler(self, rate: int) -> Resampling:
        """Resample one recording block by block (see :data:`Resampling`), with the same
        result as :meth:`resample` on the whole. This default keeps the blocks and resamples
        them at the end; families override it to bound memory on long recordings."""
        blocks: list[npt.NDArray[np.float32]] = []

        def feed(block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            blocks.append(block)
            return block[:0]

        def finish() -> npt.NDArray[np.float32]:
            whole = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
            blocks.clear()
            return self.resample(whole, rate)

        return feed, finish

    @abc.abstractmethod
    def prepare(self, samples: npt.NDArray[np.float32]) -> list[torch.Tensor]:
        """Front end: (n,) float32 at :attr:`sample_rate` -> chunks, each a (T_i, F) float32
        CPU tensor. Runs in background threads: must be thread-safe and use no GPU."""

    @abc.abstractmethod
    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, F) float32 chunks zero-padded to the longest, (B,) int64 valid frames ->
        (B, D) float32 chunk embeddings (any norm; the engine normalises the sum)."""

    @abc.abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the network to ``device`` (features arrive on the CPU)."""
