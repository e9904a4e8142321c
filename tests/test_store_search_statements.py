"""What one identification costs the database: the statements ``EnrollmentStore.search``
issues, on a real SQLite file and a real PostgreSQL server. Each statement is a round trip to
a database server, and round trips were most of a search's time on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from helpers import fake_model, fake_utterance
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def enroll(store: EnrollmentStore, name: str, rng: np.random.Generator) -> None:
    store.enroll(EnrollRequest(name, [fake_utterance(rng) for _ in range(2)]), MODEL)


@contextmanager
def statements(store: EnrollmentStore) -> Iterator[list[str]]:
    """The SQL statements the store's engine sends while the block runs (SQLite's BEGIN,
    which the store issues itself and which is no round trip, left out)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.strip().upper() != "BEGIN":
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def test_a_search_with_nothing_changed_issues_two_statements(db_url, rng):
    """The model check, the change sequence and the tenant come in one statement, the
    candidates in a second; nothing else while no change was committed."""
    with EnrollmentStore.open(db_url) as store:
        for name in ["a", "b", "c", "d"]:
            enroll(store, name, rng)
        probe = fake_utterance(rng).embedding
        store.search(probe, 3, MODEL)  # loads the index
        with statements(store) as seen:
            found = store.search(probe, 3, MODEL)[0]
        assert len(seen) == 2, seen
        assert len(found) == 3


def test_a_change_from_elsewhere_costs_one_statement_more_and_is_seen(db_url, rng):
    with EnrollmentStore.open(db_url) as reader, EnrollmentStore.open(db_url) as writer:
        enroll(writer, "a", rng)
        probe = fake_utterance(rng).embedding
        reader.search(probe, 3, MODEL)
        enroll(writer, "b", rng)
        with statements(reader) as seen:
            found = reader.search(probe, 3, MODEL)[0]
        assert sorted(c.name for c in found) == ["a", "b"]
        # The snapshot, the change log, the tenant's ids (they changed), the candidates.
        assert len(seen) == 4, seen
        writer.delete_speaker("a")
        with statements(reader) as seen:
            found = reader.search(probe, 3, MODEL)[0]
        assert [c.name for c in found] == ["b"]
        assert len(seen) == 4, seen


def test_a_tenant_written_elsewhere_is_found_by_the_search(db_url, rng):
    """A tenant never written answers empty from the one snapshot statement; once another
    store writes it, the next search finds its id in that same statement."""
    with EnrollmentStore.open(db_url) as store, EnrollmentStore.open(db_url) as other:
        enroll(store, "someone", rng)
        probe = fake_utterance(rng).embedding
        store.search(probe, 3, MODEL)
        late = store.in_tenant("late")
        with statements(store) as seen:
            assert late.search(probe, 3, MODEL) == [[]]
        assert len(seen) == 1, seen
        enroll(other.in_tenant("late"), "newcomer", rng)
        assert [c.name for c in late.search(probe, 3, MODEL)[0]] == ["newcomer"]
        assert [c.name for c in store.search(probe, 3, MODEL)[0]] == ["someone"]
