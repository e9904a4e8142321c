"""A model alone deciding pairs of recordings, by the one rule of :mod:`speakerdb.decisions`:
the same policy ``speakerdb compare`` and ``SpeakerDB.compare`` apply without a database (the
model's bundled calibration where it has one, else its cosine threshold), so that every door
gives one answer to "same speaker?"."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb._results import Comparison
from speakerdb.decisions import DecisionOptions, Scale, Side, resolve_policy
from speakerdb.errors import UsageError
from speakerdb.scoring import cosine

if TYPE_CHECKING:
    from speakerdb.model._audio import AudioInput
    from speakerdb.model._embedder import EmbeddedAudio, Embedder

__all__ = ["decide_pairs"]


def decide_pairs(
    embedder: Embedder,
    pairs: Sequence[tuple[AudioInput, AudioInput]],
    options: DecisionOptions,
    *,
    batch_size: int,
    sample_rate: int | None = None,
) -> list[Comparison]:
    """Decide many pairs with the rule of ``options`` on a model alone (no normalisation:
    there is no cohort), embedding each distinct file once. As ``SpeakerDB.compare_batch``,
    each pair's calibration reads the quality of both files (``b`` as the probe side).
    Raises the AudioError of the first unusable file, UsageError for bad options."""
    if options.norm is not Scale.COSINE:
        raise UsageError("a model alone has no cohort to normalise scores against")
    identity = embedder.identity
    policy = resolve_policy(identity, options)
    items = list(itertools.chain.from_iterable(pairs))
    position, results = embedder.embed_distinct(
        items, sample_rate=sample_rate, batch_size=batch_size
    )
    for result in results:
        if result.error is not None:
            raise result.error
    sides = [(results[position[2 * i]], results[position[2 * i + 1]]) for i in range(len(pairs))]
    cosines = [cosine(_vector(ra), _vector(rb)) for ra, rb in sides]
    decided = policy.decide(
        cosines, cosines, [_side(rb) for _, rb in sides], [_side(ra) for ra, _ in sides]
    )
    return [
        Comparison.of(d, model=identity.label, a=ra.source, b=rb.source)
        for (ra, rb), d in zip(sides, decided, strict=True)
    ]


def _side(result: EmbeddedAudio) -> Side:
    """A recording's quality as one side of a trial (what a calibration reads)."""
    return Side(result.speech_seconds, 1, result.bandwidth_hz)


def _vector(result: EmbeddedAudio) -> npt.NDArray[np.float32]:
    if result.vector is None:  # results with errors were raised above
        raise AssertionError(f"{result.source}: no embedding")
    return result.vector
