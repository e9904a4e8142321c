"""TEMPORARY glue: an Embedder for bring-your-own model families until the engine takes any
SpeakerEncoder (branch ``engine``). Once that is merged, :func:`family_embedder` becomes
``Embedder(encoder, identity, device)`` and the class below goes.

It runs each recording alone, in the calling thread: decode -> the same speech checks and
quality measures as GE2E -> the family's own resampler and front end -> one encoder call ->
L2 normalisation. Correct (the embedding is the family's, as :mod:`tests.encoder_driver`
computes it), not fast: no batching, no background decoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from speakerdb._identity import ModelIdentity
from speakerdb._quality import speech_bandwidth_hz
from speakerdb.errors import (
    AudioDecodeError,
    AudioError,
    InvalidAudioError,
    NoSpeechError,
    TooLittleSpeechError,
    UsageError,
)
from speakerdb.model._audio import (
    SAMPLE_RATE,
    AudioInput,
    _array_to_float,
    _finish,
    decode_file,
    source_label,
)
from speakerdb.model._device import resolve_device
from speakerdb.model._embedder import DEFAULT_BATCH_SIZE, EmbeddedAudio, Embedder, SkipPredicate
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._preprocess import normalize_volume, trim_long_silences
from speakerdb.model._utterance import MIN_SPEECH_SECONDS

__all__ = ["family_embedder"]


def family_embedder(
    encoder: SpeakerEncoder, identity: ModelIdentity, device: torch.device
) -> Embedder:
    """An Embedder running ``encoder`` on ``device``."""
    return _FamilyEmbedder(encoder, identity, device)


class _FamilyEmbedder(Embedder):
    def __init__(  # deliberately skips Embedder.__init__ (GE2E-only until the engine merge)
        self, encoder: SpeakerEncoder, identity: ModelIdentity, device: torch.device
    ) -> None:
        encoder.to(device)
        self._family = encoder
        self.identity = identity
        self.device = device

    def to(self, device: str | torch.device | None) -> Embedder:
        target = resolve_device(device)
        if target != self.device:
            self._family.to(target)
            self.device = target
        return self

    def iter_embed(
        self,
        sources: Iterable[AudioInput],
        *,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        skip: SkipPredicate | None = None,
    ) -> Iterator[tuple[int, EmbeddedAudio]]:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        for index, source in enumerate(sources):
            try:
                yield index, self._embed_one(source, sample_rate, index, skip)
            except AudioError as exc:
                yield index, EmbeddedAudio(exc.source, None, error=exc)
            except (MemoryError, RecursionError):
                raise
            except Exception as exc:  # a decoder tripping over a malformed file
                error = AudioDecodeError(
                    source_label(source), f"cannot decode ({type(exc).__name__}: {exc})"
                )
                yield index, EmbeddedAudio(error.source, None, error=error)

    def _embed_one(
        self,
        source: AudioInput,
        sample_rate: int | None,
        index: int,
        skip: SkipPredicate | None,
    ) -> EmbeddedAudio:
        label = source_label(source)
        if isinstance(source, np.ndarray):
            if sample_rate is None:
                raise InvalidAudioError(label, "an in-memory array needs its sample_rate")
            data, rate = _array_to_float(np.asarray(source), label), int(sample_rate)
        else:
            data, rate = decode_file(Path(source))
        # The 16 kHz decoding gives the digest, duration and speech checks every model shares.
        decoded = _finish(data, rate, label)
        speech = trim_long_silences(normalize_volume(decoded.samples))
        if speech.size == 0:
            raise NoSpeechError(label, "no speech detected")
        speech_seconds = speech.size / SAMPLE_RATE
        if speech_seconds < MIN_SPEECH_SECONDS:
            raise TooLittleSpeechError(
                label,
                f"too little speech: {speech_seconds:.2f} s after silence trimming, "
                f"at least {MIN_SPEECH_SECONDS} s needed",
            )
        try:
            bandwidth: float | None = speech_bandwidth_hz(decoded.samples, SAMPLE_RATE)
        except UsageError:
            bandwidth = None
        described = {
            "sha256": decoded.sha256,
            "duration": decoded.duration,
            "speech_seconds": speech_seconds,
            "bandwidth_hz": bandwidth,
        }
        if skip is not None and skip(index, decoded.sha256):
            return EmbeddedAudio(label, None, skipped=True, **described)  # type: ignore[arg-type]
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        samples = self._family.resample(np.ascontiguousarray(mono, dtype=np.float32), rate)
        try:
            chunks = self._family.prepare(samples)
        except TooLittleSpeechError as exc:
            raise TooLittleSpeechError(label, exc.reason) from None
        total = np.zeros(self.identity.dimension, dtype=np.float64)
        for chunk in chunks:
            lengths = torch.tensor([chunk.shape[0]], dtype=torch.int64)
            out = self._family.encode(chunk[None], lengths)
            total += out.detach().float().cpu().numpy()[0].astype(np.float64)
        vector: npt.NDArray[np.float32] = (total / np.linalg.norm(total)).astype(np.float32)
        return EmbeddedAudio(label, vector, **described)  # type: ignore[arg-type]
