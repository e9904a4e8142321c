"""Approximate (IVF) search in the store: chosen by size, trained by itself, exact scores."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import bulk_enroll, clustered_vectors, fake_model
from speakerdb import scoring
from speakerdb.storage import _index_policy as index_policy
from speakerdb.storage._check import check_store
from speakerdb.storage._index_policy import FLAT_MAX, choose_params, needs_rebuild
from speakerdb.storage._store import EnrollmentStore
from speakerdb.storage._vector_index import IndexParams, VectorIndex

DIM = 32
MODEL = fake_model(DIM)


def test_policy_switches_and_retrains():
    assert choose_params(10).kind == "flat"
    assert choose_params(FLAT_MAX - 1).kind == "flat"
    big = choose_params(FLAT_MAX)
    assert big.kind == "ivf" and big.nlist >= 64 and 1 <= big.nprobe <= big.nlist
    million = choose_params(1_000_000)
    assert million.nlist == 4000 and million.nprobe == 64
    assert choose_params(500, "ivf").kind == "ivf"
    assert choose_params(10, "ivf").kind == "flat"  # nothing to train on
    assert choose_params(10**6, "flat").kind == "flat"
    assert needs_rebuild(IndexParams("flat"), FLAT_MAX + 1)
    trained = choose_params(FLAT_MAX)
    assert not needs_rebuild(trained, 3 * FLAT_MAX)
    assert needs_rebuild(trained, 5 * FLAT_MAX)  # grew fourfold: retrain
    assert not needs_rebuild(trained, FLAT_MAX - 10)  # hysteresis near the boundary
    assert needs_rebuild(trained, FLAT_MAX // 3)


def test_ivf_index_contents_survive_updates_and_serialisation():
    vectors = clustered_vectors(5000, DIM)
    ids = np.arange(10, 5010, dtype=np.int64)
    index = VectorIndex.build(DIM, ids, vectors, choose_params(5000, "ivf"))
    assert index.params.kind == "ivf" and len(index) == 5000
    index.remove(ids[:100])
    index.upsert(ids[100:300], -vectors[100:300])
    for k in range(500):  # many single inserts: the lists get re-packed on the way
        index.upsert(np.array([10**6 + k]), vectors[k : k + 1])
    got_ids, got_vectors = index.contents()
    expected = dict(zip(ids[100:].tolist(), vectors[100:], strict=True))
    expected.update(zip(ids[100:300].tolist(), -vectors[100:300], strict=True))
    expected.update({10**6 + k: vectors[k] for k in range(500)})
    assert got_ids.tolist() == sorted(expected)
    assert np.allclose(got_vectors, np.stack([expected[i] for i in got_ids.tolist()]))
    again = VectorIndex.from_bytes(index.to_bytes(), DIM, index.params)
    assert np.array_equal(again.contents()[0], got_ids)
    assert np.allclose(again.get(150), -vectors[140])


def test_store_goes_approximate_with_exact_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(index_policy, "FLAT_MAX", 2000)
    url = f"sqlite:///{tmp_path / 'ivf.sqlite'}"
    vectors = clustered_vectors(3000, DIM, seed=1)
    with EnrollmentStore.open(url) as store:
        bulk_enroll(store, vectors[:1500], MODEL)
        assert store.index_status().params == "flat"
        bulk_enroll(store, vectors[1500:], MODEL, start=1500)
        status = store.index_status()
        assert status.params.startswith("ivf") and status.vectors == 3000
        flat = VectorIndex.build(DIM, np.arange(3000), vectors, IndexParams("flat"))
        rng = np.random.default_rng(5)
        noise = 0.05 * rng.standard_normal((200, DIM))
        probes = (vectors[rng.choice(3000, 200, replace=False)] + noise).astype(np.float32)
        results = store.search(probes, 5, MODEL)
        _, exact = flat.search(probes, 1)
        hits = 0
        for probe, found, truth in zip(probes, results, exact[:, 0], strict=True):
            hits += int(found[0].name == f"s{truth:06d}")
            _, centroid = store.centroid(found[0].name)
            assert found[0].score == scoring.cosine(probe, centroid)  # exact re-scoring
        assert hits / len(probes) >= 0.99
        assert check_store(store).consistent
    # Another process loads the trained index from its file.
    with EnrollmentStore.open(url) as store:
        assert store.index_status().params.startswith("ivf")
        assert store.index_status().file_state == "current"


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_reindex_forces_a_kind(tmp_path, kind):
    from click.testing import CliRunner

    from speakerdb.cli import cli

    url = f"sqlite:///{tmp_path / 'k.sqlite'}"
    with EnrollmentStore.open(url) as store:
        bulk_enroll(store, clustered_vectors(600, DIM, seed=2), MODEL)
    result = CliRunner().invoke(cli, ["db", "reindex", "--kind", kind, "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    with EnrollmentStore.open(url) as store:
        assert store.index_kind() == kind
        assert store.index_status().params.startswith(kind)
        assert check_store(store).consistent
