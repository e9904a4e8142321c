"""Which inverted lists a query scans: the policy's ``nprobe`` best, more where that ranking
says little.

An inverted index scans the ``nprobe`` lists whose centres score highest against the
query. That ranking is informative for a query from the population the lists were trained
on: the centres' scores fall off quickly from the best, and the nearest neighbour lies in
one of the first lists. A query from elsewhere -- a voice unlike nearly every stored one
(another channel, language or population than the lists saw when they were trained) -- sees
every centre at about the same score, and its nearest neighbour can lie in any of
thousands of lists. Measured at 10 M voiceprints (docs/index.md): the nearest neighbour of
every synthetic probe lay within the 197 lists the policy scans, while for 16 of the 60
real dev probes of unknown speakers it lay beyond them (rank up to 4375 of 12 649).

The rule (its reference comes from the index's own centres; the percentile and the cap
were chosen on the 10 M analysis of docs/index.md, not held out): the score span of the
``nprobe`` best lists (best minus ``nprobe``-th) is measured for a sample of the lists' own centres
used as queries -- points of the trained population by construction -- and its 1st
percentile is the reference. A query whose ``nprobe`` best lists span less than that (its
ranking is flatter than for 99 % of the population's own points) scans every list whose
centre scores within the reference span of its best, up to ``WIDEN_MAX`` times ``nprobe``
lists. By construction about 1 % of the trained population's own queries are widened too
(a few percent of the synthetic probes at 10 M); an outlying query costs up to
``WIDEN_MAX`` times more, which is what finding its neighbour takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb.storage._faiss import FaissIndex, faiss

__all__ = ["WIDEN_MAX", "ProbeGroup", "probe_lists", "reference_span", "search_lists"]

WIDEN_MAX = 8  # an outlying query scans at most this many times nprobe lists
_SAMPLE = 512  # centres used as reference queries (about 50 ms at 12 649 lists)
_QUANTILE = 1.0  # percent: what counts as flatter than the trained population's points


def reference_span(quantizer: FaissIndex, nlist: int, nprobe: int) -> float:
    """The 1st percentile, over a fixed sample of the ``nlist`` centres held by ``quantizer``
    as queries, of the score span of their ``nprobe`` nearest other centres (best minus
    ``nprobe``-th). 0.0 (never widen) when every list is scanned already or there are too
    few lists to measure."""
    if nprobe < 2 or nprobe >= nlist - 1:
        return 0.0
    rng = np.random.default_rng(0)  # the same sample each time: the same reference
    rows = np.sort(rng.choice(nlist, min(nlist, _SAMPLE), replace=False))
    # All centres at once (13 MB at 12 649 lists): every search reads them all anyway.
    centres = np.ascontiguousarray(quantizer.reconstruct_n(0, nlist)[rows], np.float32)
    scores, _ = quantizer.search(centres, nprobe + 1)
    # Column 0 is the centre itself: the span is over the nearest *other* centres.
    spans = scores[:, 1] - scores[:, nprobe]
    return float(np.percentile(spans, _QUANTILE))


@dataclass(frozen=True)
class ProbeGroup:
    """Queries that scan lists of one width: the rows of the batch they are, and per row the
    centre scores (r, w) float32 and list numbers (r, w) int64, best first, -1 past a
    row's own lists."""

    rows: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float32]
    lists: npt.NDArray[np.int64]


def probe_lists(
    quantizer: FaissIndex, queries: npt.NDArray[np.float32], nprobe: int, nlist: int, span: float
) -> list[ProbeGroup]:
    """The lists each of ``queries`` (m, d) scans, in at most two groups: the queries that
    scan their ``nprobe`` best lists, and those whose ``nprobe`` best span less than
    ``span`` (:func:`reference_span`), which scan every list within ``span`` of their best,
    up to ``WIDEN_MAX * nprobe``. (Two groups, so a batch with one widened query does not
    hold every row at the widest width.)"""
    scores, lists = quantizer.search(queries, nprobe)
    flat = (scores[:, 0] - scores[:, nprobe - 1]) < span
    if span <= 0.0 or not flat.any():
        return [ProbeGroup(np.arange(len(queries)), scores, lists)]
    widest = min(nlist, WIDEN_MAX * nprobe)
    wide = np.flatnonzero(flat)
    wide_scores, wide_lists = quantizer.search(np.ascontiguousarray(queries[wide]), widest)
    within = wide_scores >= wide_scores[:, :1] - span
    within[:, :nprobe] = True
    groups = [ProbeGroup(wide, wide_scores, np.where(within, wide_lists, -1))]
    plain = np.flatnonzero(~flat)
    if plain.size:
        groups.append(ProbeGroup(plain, scores[plain], lists[plain]))
    return groups


def search_lists(
    ivf: Any,
    queries: npt.NDArray[np.float32],
    k: int,
    groups: list[ProbeGroup],
    selector: object | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top-``k`` of ``queries`` (m, d) among the lists of ``groups`` (:func:`probe_lists`)
    of the inverted index ``ivf``, optionally through an id ``selector``: scores (m, k)
    float32 and ids (m, k) int64, -1 where fewer were found. The probe width travels in
    the search parameters, so concurrent searches never share it; FAISS spreads each
    group's queries over its threads (``parallel_mode`` 3, set where the index is made)."""
    out_scores = np.empty((len(queries), k), np.float32)
    out_ids = np.empty((len(queries), k), np.int64)
    for group in groups:
        m = len(group.rows)
        # Named arrays: FAISS reads them through raw pointers, which do not keep them alive.
        x = np.ascontiguousarray(queries[group.rows], np.float32)
        lists = np.ascontiguousarray(group.lists, np.int64)
        centre_scores = np.ascontiguousarray(group.scores, np.float32)
        found_scores = np.empty((m, k), np.float32)
        found_ids = np.empty((m, k), np.int64)
        params = faiss.SearchParametersIVF(nprobe=int(lists.shape[1]))
        if selector is not None:
            params.sel = selector
        ivf.search_preassigned_c(
            m,
            faiss.swig_ptr(x),
            k,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(centre_scores),
            faiss.swig_ptr(found_scores),
            faiss.swig_ptr(found_ids),
            False,
            params,
        )
        out_scores[group.rows], out_ids[group.rows] = found_scores, found_ids
    return out_scores, out_ids
