"""Watchlists of known fraudsters (see :mod:`speakerdb.storage._watchlist`): the verbs that
add, list and remove voices, and :func:`watch`, which scores every verify's and identify's
probes against the tenant's watchlist with the decision rule of raw scores, and turns a
match into decision ``KNOWN_FRAUDSTER`` (a verification not accepted, an identification of
nobody)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from speakerdb._results import Identification, Verification
from speakerdb.decisions import DecisionOptions, DecisionPolicy, Side
from speakerdb.enroll._base import FacadeBase, side_of, vector_of
from speakerdb.errors import AudioError
from speakerdb.model._audio import AudioInput
from speakerdb.storage._watchlist import (
    WatchlistRecord,
    add_voice,
    remove_voice,
    watched,
    watchlist,
)

if TYPE_CHECKING:
    from speakerdb.model._embedder import EmbeddedAudio

__all__ = ["KNOWN_FRAUDSTER", "WatchlistVerbs", "watch"]

KNOWN_FRAUDSTER = "KNOWN_FRAUDSTER"

Watched = TypeVar("Watched", Verification, Identification)


class WatchlistVerbs(FacadeBase):
    """The watchlist verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def watchlist_add(
        self, name: str, audio: Sequence[AudioInput], *, sample_rate: int | None = None
    ) -> WatchlistRecord:
        """Put ``name`` (a known fraudster) on this tenant's watchlist with a voiceprint of
        its recordings (replacing an entry of that name). From then on every verify and
        identify of the tenant reports a match with it. Raises AudioError when no recording
        is usable, UsageError, ModelMismatchError, StoreError."""
        embedded = self.model.embed(list(audio), sample_rate=sample_rate)
        good = [e for e in embedded if e.vector is not None]
        if not good:
            first = embedded[0].error if embedded else None
            if isinstance(first, AudioError):
                raise first
        vectors = np.zeros((len(good), self.identity.dimension), dtype=np.float32)
        for row, item in enumerate(good):
            vectors[row] = vector_of(item)
        return add_voice(
            self.store,
            name,
            vectors,
            [e.speech_seconds or 0.0 for e in good],
            [e.bandwidth_hz for e in good],
            self.identity,
        )

    def watchlist(self) -> list[WatchlistRecord]:
        """This tenant's watchlist, by name (without voiceprints)."""
        return watchlist(self.store)

    def watchlist_remove(self, name: str) -> None:
        """Take ``name`` off this tenant's watchlist. Raises NotFoundError."""
        remove_voice(self.store, name)


def watch(
    db: FacadeBase,
    policy: DecisionPolicy | None,
    embedded: Sequence[EmbeddedAudio],
    results: list[Watched | AudioError],
    options: DecisionOptions | None = None,
) -> list[Watched | AudioError]:
    """``results`` (one per ``embedded`` item) with the watchlist's matches of each decided
    probe: ``watchlist`` lists the watchlisted voices whose score reaches the rule's
    threshold, best first, and any match makes the decision KNOWN_FRAUDSTER (a spoof caught
    first stays SPOOF_DETECTED). Without a watchlist the results are returned as they are.
    ``policy``: the lookup's rule on raw scores (None: a normalised lookup; the raw-score
    rule at the same operating point, ``options``' prior or far, is used)."""
    voices = watched(db.store)
    if not voices:
        return results
    if policy is None:
        point = options or DecisionOptions()
        policy = db.decision_policy(DecisionOptions(prior=point.prior, far=point.far))
    rule = policy
    voiceprints = np.stack([v.voiceprint for v in voices])
    sides = [Side(v.speech_seconds, v.utterances, v.bandwidth_hz) for v in voices]
    out = list(results)
    for i, (item, result) in enumerate(zip(embedded, results, strict=True)):
        if item.vector is None or isinstance(result, AudioError):
            continue
        cosines = [float(c) for c in voiceprints @ item.vector]
        decisions = rule.decide(cosines, cosines, [side_of(item)] * len(voices), sides)
        hits: list[dict[str, Any]] = [
            {"name": v.name, "score": d.score, "llr": d.llr}
            for v, d in sorted(
                zip(voices, decisions, strict=True), key=lambda p: (-p[1].score, p[0].name)
            )
            if d.accepted
        ]
        decision = result.decision or (KNOWN_FRAUDSTER if hits else None)
        if isinstance(result, Verification):
            accepted = result.accepted and not hits
            out[i] = dataclasses.replace(
                result, watchlist=hits, decision=decision, accepted=accepted
            )
        else:
            best = None if hits else result.best
            out[i] = dataclasses.replace(result, watchlist=hits, decision=decision, best=best)
    return out
