"""Each tenant's speaker ids, which a search restricts the shared index to, kept in step with
the change log (speakerdb.storage._tenant_ids) instead of re-read after every change: real
SQLite and PostgreSQL, changes made by this store and by another one."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from test_store_search_statements import statements

from helpers import fake_model, fake_utterance
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._schema import Speaker
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(77)


def enroll(store: EnrollmentStore, name: str, rng: np.random.Generator) -> None:
    store.enroll(EnrollRequest(name, [fake_utterance(rng)]), MODEL)


def read_all(store: EnrollmentStore, tenant: str) -> list[int]:
    """The tenant's speaker ids read afresh from SQL: the reference."""
    view = store.in_tenant(tenant)
    with view.reading("reference") as conn:
        tenant_id = view.tenant_id(conn)
        if tenant_id is None:
            return []
        found = conn.execute(
            select(Speaker.id).where(Speaker.tenant_id == tenant_id).order_by(Speaker.id)
        )
        return [int(i) for i in found.scalars()]


def held(store: EnrollmentStore, tenant: str) -> list[int]:
    """The ids a search of ``tenant`` restricts the index to, as the store keeps them."""
    view = store.in_tenant(tenant)
    with view.reading("held") as conn:
        tenant_id = view.tenant_id(conn)
        assert tenant_id is not None
        return [int(i) for i in view._tenant_speaker_ids(conn, tenant_id)]


def test_the_ids_follow_enrollments_and_deletions_in_every_tenant(db_url, rng):
    """Random enrollments and deletions in two tenants, through this store and another
    one (another process's writes reach this one only through the change log): after each,
    the ids a search uses equal a fresh read, for both tenants, and searches find what
    the tenant holds and nothing of the other's."""
    with EnrollmentStore.open(db_url) as store, EnrollmentStore.open(db_url) as other:
        for tenant in ("red", "blue"):
            enroll(store.in_tenant(tenant), f"{tenant}-0", rng)
        probe = fake_utterance(rng).embedding
        names: dict[str, list[str]] = {"red": ["red-0"], "blue": ["blue-0"]}
        choice = np.random.default_rng(5)
        for step in range(24):  # bounded: 24 changes
            tenant = ("red", "blue")[int(choice.integers(2))]
            writer = (store, other)[int(choice.integers(2))].in_tenant(tenant)
            if names[tenant] and choice.random() < 0.35:
                gone = names[tenant].pop(int(choice.integers(len(names[tenant]))))
                writer.delete_speaker(gone)
            else:
                name = f"{tenant}-{step + 1}"
                enroll(writer, name, rng)
                names[tenant].append(name)
            for t in ("red", "blue"):
                view = store.in_tenant(t)
                found = view.search(probe, 50, MODEL)[0]
                assert sorted(c.name for c in found) == sorted(names[t]), (step, t)
                assert held(store, t) == read_all(store, t), (step, t)


def test_after_a_change_the_ids_are_not_read_again(db_url, rng):
    """The first search after an enrollment reads the changes since the ids were known,
    not every speaker of the tenant."""
    with EnrollmentStore.open(db_url) as store:
        for i in range(5):
            enroll(store, f"s{i}", rng)
        probe = fake_utterance(rng).embedding
        store.search(probe, 3, MODEL)
        enroll(store, "late", rng)
        with statements(store) as seen:
            found = store.search(probe, 10, MODEL)[0]
        assert "late" in {c.name for c in found}
        scans = [s for s in seen if "FROM speakers" in s and "changes" not in s]
        assert not any("speakers.tenant_id =" in s for s in scans), seen
        assert held(store, "default") == read_all(store, "default")


def test_the_set_updates_equal_set_operations_on_the_whole():
    """Removing and adding a few ids by binary search gives what numpy's set operations on
    the whole array give (random sets, ids absent or present, duplicates in the removals)."""
    from speakerdb.storage._tenant_ids import _with, _without

    rng = np.random.default_rng(0)
    for _ in range(500):  # bounded
        ids = np.unique(rng.integers(0, 200, int(rng.integers(0, 50)))).astype(np.int64)
        gone = rng.integers(0, 200, int(rng.integers(0, 10))).astype(np.int64)
        new = np.unique(rng.integers(0, 200, int(rng.integers(0, 10)))).astype(np.int64)
        got = _with(_without(ids, gone), new)
        assert got.dtype == np.int64
        assert np.array_equal(got, np.union1d(np.setdiff1d(ids, gone), new))
