"""Crash safety and concurrency of the store, with real processes, real kills, real databases.

* Enrollment children are SIGKILLed at random moments; after every kill, everything whose call
  returned is there, no speaker lacks utterances, and the index equals SQL.
* Four processes enroll 50 speakers each into one database at once: all 200 arrive, the index is
  consistent, and no "database is locked" reaches anyone.

Nothing here waits for wall-clock time to pass: a kill is timed from what the child reports it
has done (its confirmations, read line by line), so a slow or loaded machine only makes the
test slower, never wrong. Deadlines exist only to turn a hung child into a failure.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from helpers import fake_model
from speakerdb.storage._check import check_store
from speakerdb.storage._store import EnrollmentStore

WORKER = Path(__file__).with_name("store_worker.py")
KILLS_PER_DATABASE = 12
MODEL = fake_model()
HUNG_CHILD_S = 600  # only a child that hangs takes this long to confirm its first enrollment


def _spawn(url: str, prefix: str, count: int, seed: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, prefix, str(count), str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


class _Confirmations:
    """A child's stdout, read line by line by a thread as the child writes it."""

    def __init__(self, child: subprocess.Popen) -> None:
        self._child = child
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert child.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(child.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: Iterable[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait(self, count: int) -> None:
        """Until the child has confirmed ``count`` more enrollments (fails if it exits or
        hangs first)."""
        while count > 0:
            try:
                line = self._lines.get(timeout=HUNG_CHILD_S)
            except queue.Empty:
                pytest.fail(f"the child confirmed nothing for {HUNG_CHILD_S} s")
            if line is None:
                stderr = self._child.stderr.read() if self._child.stderr else ""
                pytest.fail(f"the child exited before confirming enough: {stderr}")
            self.seen.append(line)
            count -= line.startswith("done ")

    def rest(self) -> str:
        """Everything the child wrote, once it has exited."""
        self._reader.join(timeout=HUNG_CHILD_S)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


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
        confirmations = _Confirmations(child)
        # However long its imports take: the first enrollment, then a random number more,
        # then a random point inside the next one.
        confirmations.wait(1 + rnd.randrange(0, 25))
        time.sleep(rnd.uniform(0.0, 0.02))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=HUNG_CHILD_S)
        stdout = confirmations.rest()
        assert child.returncode == -signal.SIGKILL
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
