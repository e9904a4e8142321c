"""The inverted index's probe rule (speakerdb.storage._probing): queries of the population
the lists were trained on scan exactly the policy's nprobe lists, with FAISS's own answers;
a query the list ranking says little about scans more and finds its nearest neighbour."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from speakerdb.storage._probing import WIDEN_MAX, probe_lists, reference_span, search_lists
from speakerdb.storage._vector_index import IndexParams, VectorIndex

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _voices(seed: int, n: int, rng: np.random.Generator, dims: slice) -> np.ndarray:
    """(n, DIM) voiceprint-like vectors of one population living in ``dims``: a positive
    common direction, clusters in a low-rank subspace with decaying scales, a little
    noise (the recipe of benchmarks/synthetic.py, smaller)."""
    shape = np.random.default_rng(seed)
    width = dims.stop - dims.start
    mean = np.abs(shape.standard_normal(width))
    basis = np.linalg.qr(shape.standard_normal((width, 12)))[0]
    scales = 0.9 / np.sqrt(np.arange(1, 13))
    centres = (shape.standard_normal((256, 12)) * scales * 0.5) @ basis.T
    own = (rng.standard_normal((n, 12)) * scales * 0.2) @ basis.T
    x = np.zeros((n, DIM))
    x[:, dims] = mean / np.linalg.norm(mean) + centres[rng.integers(0, 256, n)] + own
    return x + 0.01 * rng.standard_normal((n, DIM))


def _population(n: int, rng: np.random.Generator) -> np.ndarray:
    """The population the lists are trained on."""
    return _unit(_voices(1, n, rng, slice(0, 32)))


def _outsiders(n: int, rng: np.random.Generator) -> np.ndarray:
    """Another population (another channel, say): it shares the first one's common
    direction in part, and varies only in dimensions that population does not use, so
    every list centre scores it about alike."""
    first = _voices(1, n, rng, slice(0, 32))
    return _unit(
        0.1 * first / np.linalg.norm(first, axis=1, keepdims=True)
        + _voices(2, n, rng, slice(32, 64))
    )


@pytest.fixture(scope="module")
def built() -> tuple[VectorIndex, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    # Lists trained on the population alone; the outsiders arrive afterwards, as speakers of
    # a new channel do between two retrainings.
    population = _population(40_000, rng)
    params = IndexParams("ivf", nlist=400, nprobe=8, trained_on=len(population))
    ids = np.arange(1, len(population) + 1, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, population, params)
    outsiders = _outsiders(300, rng)
    index.upsert(np.arange(100_001, 100_301, dtype=np.int64), outsiders)
    vectors = np.concatenate([population, outsiders])
    all_ids = np.concatenate([ids, np.arange(100_001, 100_301, dtype=np.int64)])
    return index, vectors, all_ids, population


def _lists_of(groups, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The groups of probe_lists as (m, widest) centre scores and list numbers (-1: none)."""
    width = max(g.lists.shape[1] for g in groups)
    scores = np.full((m, width), -np.inf, np.float32)
    lists = np.full((m, width), -1, np.int64)
    for g in groups:
        scores[g.rows, : g.lists.shape[1]] = g.scores
        lists[g.rows, : g.lists.shape[1]] = g.lists
    return scores, lists


def _exact(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return ids[np.argmax(queries @ vectors.T, axis=1)]


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_queries_of_the_trained_population_scan_nprobe_lists_with_faiss_answers(
    kind: str,
) -> None:
    rng = np.random.default_rng(1)
    population = _population(20_000, rng)
    params = IndexParams(kind, nlist=200, nprobe=8, trained_on=len(population))
    index = VectorIndex.build(DIM, np.arange(1, 20_001, dtype=np.int64), population, params)
    queries = _unit(population[:200] + 0.05 * rng.standard_normal((200, DIM)))
    ivf = faiss.extract_index_ivf(index._index)
    span = reference_span(ivf.quantizer, ivf.nlist, 8)
    _, lists = _lists_of(probe_lists(ivf.quantizer, queries, 8, ivf.nlist, span), 200)
    widened = (lists >= 0).sum(axis=1) > 8
    assert widened.mean() <= 0.05  # the rule leaves the population's own queries alone
    plain = ~widened
    ours_scores, ours_ids = index.search(queries[plain], 10)
    faiss_scores, faiss_ids = index._index.search(queries[plain], 10)
    np.testing.assert_array_equal(ours_ids, faiss_ids)
    np.testing.assert_array_equal(ours_scores, faiss_scores)


def test_an_outlying_query_scans_the_widened_lists(built) -> None:
    index, vectors, ids, _ = built
    probes = _outsiders(200, np.random.default_rng(9))  # unknown speakers of the new population
    truth = _exact(vectors, ids, probes)
    ivf = faiss.extract_index_ivf(index._index)
    span = reference_span(ivf.quantizer, ivf.nlist, 8)
    groups = probe_lists(ivf.quantizer, probes, 8, ivf.nlist, span)
    assert len(groups) <= 2
    _, lists = _lists_of(groups, len(probes))
    widths = (lists >= 0).sum(axis=1)
    assert (widths > 8).mean() >= 0.5  # the list ranking is flat for most of them
    assert widths.max() <= WIDEN_MAX * 8
    # Where each probe's nearest neighbour is stored (ivf assigns by the nearest centre).
    _, home = ivf.quantizer.search(np.ascontiguousarray(vectors[np.searchsorted(ids, truth)]), 1)
    scanned = (lists == home).any(axis=1)

    _, ours = index.search(probes, 1)
    _, fixed = index._index.search(probes, 1)  # FAISS with the fixed nprobe
    ours_hit, fixed_hit = ours[:, 0] == truth, fixed[:, 0] == truth
    # Full-precision lists: a probe finds its neighbour exactly when it scans its list.
    np.testing.assert_array_equal(ours_hit, scanned)
    assert ours_hit.sum() > fixed_hit.sum()
    assert not (fixed_hit & ~ours_hit).any()  # nothing the fixed rule found is lost


def test_the_widening_is_capped(built) -> None:
    index, _, _, _ = built
    ivf = faiss.extract_index_ivf(index._index)
    probes = _outsiders(20, np.random.default_rng(3))
    # A span no query can stay within: every query would take every list but for the cap.
    groups = probe_lists(ivf.quantizer, probes, 8, ivf.nlist, span=10.0)
    assert len(groups) == 1
    scores, lists = groups[0].scores, groups[0].lists
    assert lists.shape == (20, WIDEN_MAX * 8)
    assert (lists >= 0).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_widened_queries_get_faiss_answers_over_the_widened_lists(kind: str, built) -> None:
    """Every query widened to the cap (a span none stays within) gets exactly what FAISS's
    own search scanning that many lists gives: ids and scores, so the centre scores passed
    for the extra lists are the right ones (ivfsq adds them to every score), and a batch
    mixing widened and plain queries is answered row for row."""
    _, vectors, ids, population = built
    params = IndexParams(kind, nlist=400, nprobe=8, trained_on=len(population))
    # Trained on the population alone, the outsiders added afterwards, as in ``built``.
    index = VectorIndex.build(DIM, ids[: len(population)], population, params)
    index.upsert(ids[len(population) :], vectors[len(population) :])
    ivf = faiss.extract_index_ivf(index._index)
    probes = np.concatenate([_outsiders(30, np.random.default_rng(21)), population[:30]])
    groups = probe_lists(ivf.quantizer, probes, 8, ivf.nlist, span=10.0)
    ours_scores, ours_ids = search_lists(ivf, probes, 10, groups)
    wide = faiss.SearchParametersIVF(nprobe=WIDEN_MAX * 8)
    faiss_scores, faiss_ids = index._index.search(probes, 10, params=wide)
    np.testing.assert_array_equal(ours_ids, faiss_ids)
    np.testing.assert_array_equal(ours_scores, faiss_scores)

    # A mixed batch: each row as it would be alone.
    span = reference_span(ivf.quantizer, ivf.nlist, 8)
    mixed = probe_lists(ivf.quantizer, probes, 8, ivf.nlist, span)
    assert len(mixed) == 2
    batch_scores, batch_ids = search_lists(ivf, probes, 10, mixed)
    for row in (0, 1, 40, 59):
        one = probe_lists(ivf.quantizer, probes[row : row + 1], 8, ivf.nlist, span)
        alone_scores, alone_ids = search_lists(ivf, probes[row : row + 1], 10, one)
        np.testing.assert_array_equal(batch_ids[row], alone_ids[0])
        np.testing.assert_array_equal(batch_scores[row], alone_scores[0])


def test_a_batch_is_spread_over_threads(built) -> None:
    index, _, _, _ = built
    assert faiss.extract_index_ivf(index._index).parallel_mode == 3
    loaded = VectorIndex.from_bytes(index.to_bytes(), DIM, index.params)
    assert faiss.extract_index_ivf(loaded._index).parallel_mode == 3


def test_restricted_search_takes_the_same_lists(built) -> None:
    index, _, ids, _ = built
    probes = _outsiders(50, np.random.default_rng(11))
    everyone = faiss.IDSelectorBatch(np.ascontiguousarray(ids))
    np.testing.assert_array_equal(
        index._search_lists(probes, 5, everyone)[1], index.search(probes, 5)[1]
    )
    evens = np.sort(ids[ids % 2 == 0])
    _, found = index._search_lists(probes, 5, faiss.IDSelectorBatch(evens))
    assert np.isin(found, evens).all()


def test_no_widening_when_every_list_is_scanned() -> None:
    quantizer = faiss.IndexFlatIP(DIM)
    quantizer.add(_population(10, np.random.default_rng(0)))
    assert reference_span(quantizer, 10, 9) == 0.0
    assert reference_span(quantizer, 10, 10) == 0.0
    assert reference_span(quantizer, 10, 1) == 0.0
