"""Impostor cohorts for AS-norm score normalisation, and the normalised scores of trials and
identification candidates.

A cohort is either recordings the user names (embedded once per SpeakerDB) or, by default,
the voiceprints of the enrolled speakers. Stored voiceprints are used only after checking
that the database holds the current model's vectors: a cohort of another model's vectors
would give meaningless z-scores without any error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.decisions import Scale
from speakerdb.errors import UsageError
from speakerdb.scoring import as_norm, cosine, cosine_scores
from speakerdb.storage._records import Candidate

if TYPE_CHECKING:
    from collections.abc import Callable

    from speakerdb._identity import ModelIdentity
    from speakerdb.model._audio import AudioInput
    from speakerdb.model._embedder import EmbeddedAudio, Embedder
    from speakerdb.storage._store import EnrollmentStore

__all__ = ["MAX_DATABASE_COHORT", "Cohorts", "normalization"]

MAX_DATABASE_COHORT = 5000
"""Enrolled voiceprints used as the default cohort at most (a fixed sample beyond): the
top-N statistics need impostors, not all of them."""


def normalization(name: str | None) -> str | None:
    """The canonical name of a score normalisation: None for raw cosine scores ("none").
    Raises UsageError for unknown names."""
    return Scale.of_norm(name).normalization


class Cohorts:
    """Cohort voiceprints of one SpeakerDB, and AS-norm scoring against them.

    ``embedder`` is called lazily (the model loads only if a recording cohort is used);
    ``identity`` is the model whose vectors are scored.
    """

    def __init__(
        self,
        store: EnrollmentStore | None,
        embedder: Callable[[], Embedder],
        identity: Callable[[], ModelIdentity],
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._identity = identity
        self._embedded: dict[tuple[str, ...], npt.NDArray[np.float32]] = {}

    def bank(
        self, cohort: Sequence[AudioInput] | None, exclude: int | None = None
    ) -> npt.NDArray[np.float32]:
        """(C, D) impostor voiceprints: the given recordings, else every enrolled speaker's
        voiceprint except the speaker id ``exclude``. Raises ModelMismatchError when the
        database holds another model's vectors, UsageError when no recording is usable."""
        if cohort is not None:
            key = tuple(str(c) for c in cohort)
            if key not in self._embedded:
                embedded = self._embedder().embed(list(cohort))
                usable = [e.vector for e in embedded if e.vector is not None]
                if not usable:
                    raise UsageError("no usable recording in the cohort")
                self._embedded[key] = np.stack(usable)
            return self._embedded[key]
        store = self._database()
        store.check_model(self._identity())
        if store.model() is None:
            raise UsageError(
                "score normalisation against the enrolled speakers needs enrolled speakers "
                "(or give --cohort M.jsonl)"
            )
        ids, vectors = store.index_vectors()
        if exclude is not None:
            keep = ids != exclude
            vectors = vectors[keep]
        if len(vectors) > MAX_DATABASE_COHORT:
            rows = np.random.default_rng(0).choice(len(vectors), MAX_DATABASE_COHORT, replace=False)
            vectors = vectors[np.sort(rows)]
        return vectors

    def _database(self) -> EnrollmentStore:
        if self._store is None:
            raise UsageError(
                "score normalisation against the enrolled speakers needs a database "
                "(--db URL), or give --cohort M.jsonl"
            )
        return self._store

    def pair_scores(
        self,
        embedded: Sequence[EmbeddedAudio],
        pairs: Sequence[tuple[int, int]],
        norm: str | None,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
    ) -> list[tuple[float, float]]:
        """(raw cosine, score used for the decision) of each pair of positions in
        ``embedded`` (every one of which has a vector)."""
        raw = [cosine(_vector(embedded[a]), _vector(embedded[b])) for a, b in pairs]
        if norm is None or not pairs:
            return [(r, r) for r in raw]
        used = sorted({i for pair in pairs for i in pair})
        position = {i: k for k, i in enumerate(used)}
        against = cosine_scores(np.stack([_vector(embedded[i]) for i in used]), self.bank(cohort))
        a_side = against[[position[a] for a, _ in pairs]]
        b_side = against[[position[b] for _, b in pairs]]
        values = as_norm(np.array(raw), a_side, b_side, cohort_size)
        return [(r, float(v)) for r, v in zip(raw, values, strict=True)]

    def verification_scores(
        self,
        vectors: npt.NDArray[np.float32],
        centroid: npt.NDArray[np.float32],
        speaker_id: int,
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
    ) -> npt.NDArray[np.float64]:
        """AS-norm scores (n,) of probe ``vectors`` (n, D) against one speaker's voiceprint
        (D,); the speaker itself is left out of a database cohort."""
        bank = self.bank(cohort, exclude=speaker_id)
        raw = cosine_scores(vectors, centroid[None, :])[:, 0]
        enroll_side = np.repeat(cosine_scores(centroid[None, :], bank), len(vectors), axis=0)
        return as_norm(raw, enroll_side, cosine_scores(vectors, bank), cohort_size)

    def rescore_candidates(
        self,
        probes: npt.NDArray[np.float32],
        found: list[list[Candidate]],
        cohort: Sequence[AudioInput] | None,
        cohort_size: int,
    ) -> list[list[Candidate]]:
        """Identification candidates re-scored with AS-norm (their ``score`` becomes the
        z-score; the rest, enrollment quality included, is kept) and re-ranked, best first."""
        bank_all = self.bank(cohort)
        out: list[list[Candidate]] = []
        for probe, candidates in zip(probes, found, strict=True):
            rescored: list[Candidate] = []
            for c in candidates:
                centroid = self._database().centroid(c.name)[1]
                # The candidate itself is no impostor of itself.
                bank = bank_all if cohort is not None else _without(bank_all, centroid)
                value = as_norm(
                    [c.score],
                    cosine_scores(centroid[None, :], bank),
                    cosine_scores(probe[None, :], bank),
                    cohort_size,
                )[0]
                rescored.append(dataclasses.replace(c, score=float(value)))
            out.append(sorted(rescored, key=lambda c: -c.score))
        return out


def _vector(item: EmbeddedAudio) -> npt.NDArray[np.float32]:
    if item.vector is None:  # callers pass embedded inputs only
        raise ValueError(f"{item.source} has no voiceprint")
    return item.vector


def _without(
    bank: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``bank`` without the rows equal to ``vector``."""
    kept: npt.NDArray[np.float32] = bank[~np.all(bank == vector, axis=1)]
    return kept
