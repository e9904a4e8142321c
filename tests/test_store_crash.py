"""Crash safety and concurrency of the store, with real processes, real kills, real databases.

* Enrollment children are SIGKILLed at random moments; after every kill, everything whose call
  returned is there, no speaker lacks utterances, and the index equals SQL.
* Four processes enroll 50 speakers each into one database at once: all 200 arrive, the index is
  consistent, and no "database is locked" reaches anyone.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import fake_model
from speakerdb.storage._check import check_store
from speakerdb.storage._store import EnrollmentStore

WORKER = Path(__file__).with_name("store_worker.py")
KILLS_PER_DATABASE = 12
MODEL = fake_model()


def _spawn(url: str, prefix: str, count: int, seed: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, prefix, str(count), str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _confirmed(stdout: str) -> dict[str, int]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "done":
            out[parts[1]] = int(parts[2])
    return out


@pytest.mark.slow
def test_sigkill_during_enrollment_loses_nothing_that_returned(db_url):
    EnrollmentStore.open(db_url).close()  # created up front; the kills target enrollment
    rnd = random.Random(7)
    confirmed: dict[str, int] = {}
    kills = 0
    for round_ in range(KILLS_PER_DATABASE):
        args = ["--save-often"] if round_ % 2 == 0 else ["--batch", "3"]
        # Far more work than the child can finish: the kill always lands mid-work.
        child = _spawn(db_url, f"r{round_:02d}", 1_000_000, round_, "--pause", "0.002", *args)
        time.sleep(rnd.uniform(0.6, 1.8))
        child.send_signal(signal.SIGKILL)
        stdout, stderr = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, stderr
        kills += 1
        round_confirmed = _confirmed(stdout)
        confirmed.update(round_confirmed)
        with EnrollmentStore.open(db_url) as store:
            present = {s.name: s.utterances for s in store.speakers()}
            for name, utterances in confirmed.items():
                assert present.get(name) == utterances, f"round {round_}: {name} lost"
            # Beyond what was confirmed: at most the batch in flight (committed, killed before
            # it was reported), and whole. From now on it counts as confirmed.
            unconfirmed = set(present) - set(confirmed)
            assert all(name.startswith(f"r{round_:02d}-") for name in unconfirmed)
            assert len(unconfirmed) <= 3
            assert all(count >= 1 for count in present.values())
            confirmed.update({name: present[name] for name in unconfirmed})
            report = check_store(store)
            assert report.consistent, report.problems
            ids, vectors = store.index_vectors()
            for speaker_id, vector in zip(ids[:50], vectors[:50], strict=False):
                name = next(s.name for s in store.speakers() if s.id == speaker_id)
                assert np.allclose(store.centroid(name)[1], vector, atol=1e-6)
            on_disk = store.stored_index()
            assert not isinstance(on_disk, str) or on_disk == "missing", on_disk
    assert kills >= KILLS_PER_DATABASE
    assert len(confirmed) > KILLS_PER_DATABASE  # the children did real work before dying


@pytest.mark.slow
def test_four_concurrent_writers_lose_nothing(db_url):
    # The database does not exist yet: the four also race to create its schema.
    children = [_spawn(db_url, f"w{i}", 50, 100 + i) for i in range(4)]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
        assert "locked" not in stderr.lower() and "locked" not in stdout.lower()
        assert len(_confirmed(stdout)) == 50
    with EnrollmentStore.open(db_url) as store:
        names = [s.name for s in store.speakers()]
        assert len(names) == 200 and len(set(names)) == 200
        report = check_store(store)
        assert report.consistent, report.problems
        assert report.speakers == 200
        assert len(store.search(np.ones(16), 500, MODEL)[0]) == 200
