"""Manifest enrollment through the real CLI, killed with SIGKILL at random moments and resumed;
and three enrollers writing into one database at once. SQLite and PostgreSQL.

A kill is timed from what the child has done -- speakers committed, seen in the database --
never from wall-clock guesses: a slow machine makes the test slower, not wrong."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import manifest
from speakerdb.errors import SpeakerDBError
from speakerdb.storage._store import EnrollmentStore

KILLS = 3
HUNG_CHILD_S = 900  # only a child that hangs takes this long to commit a speaker


def _write_manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    path.write_text(
        "".join(json.dumps({"audio_filepath": str(p), "label": s}) + "\n" for p, s in rows)
    )
    return path


def _all_rows() -> list[tuple[Path, str]]:
    rows = manifest("librispeech") + manifest("vctk") + manifest("librispeech", "singles.jsonl")
    return rows + manifest("arabic-commands")


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speakerdb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def _committed(db_url: str) -> int:
    """How many speakers the database holds (0 while it does not exist yet). Reads only."""
    try:
        with EnrollmentStore.open(db_url, read_only=True) as store:
            return store.counts()[0]
    except SpeakerDBError:
        return 0  # not created yet, or its schema is being created


def _wait_for_commits(child: subprocess.Popen, db_url: str, target: int) -> None:
    """Until the database holds ``target`` speakers or the child has exited."""
    deadline = time.monotonic() + HUNG_CHILD_S
    while _committed(db_url) < target and child.poll() is None:
        assert time.monotonic() < deadline, f"no {target} speakers after {HUNG_CHILD_S} s"
        time.sleep(0.05)  # polling an event, not a guess at how long it takes


def _check(db_url: str) -> dict:
    result = _cli("db", "check", "--db", db_url, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == (0 if report["consistent"] else 1)
    return report


def _counts(db_url: str) -> dict[str, int]:
    result = _cli("speakers", "list", "--db", db_url, "--json")
    assert result.returncode == 0, result.stderr
    return {s["name"]: s["utterances"] for s in json.loads(result.stdout)}


@pytest.mark.slow
def test_killed_manifest_enrollment_resumes_exactly(db_url, tmp_path):
    rows = _all_rows()
    expected = Counter(label for _, label in rows)
    path = _write_manifest(tmp_path / "all.jsonl", rows)
    rnd = random.Random(11)
    for round_ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "speakerdb", "enroll", "--manifest", str(path), "--db", db_url],
            # Not pipes: nobody reads them until the kill, and a full pipe would stall it.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        # The first speaker this run commits, then a random number more, then a random point
        # inside the next one.
        already = _committed(db_url)
        _wait_for_commits(child, db_url, already + 1 + rnd.randrange(0, 8))
        time.sleep(rnd.uniform(0.0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=HUNG_CHILD_S)
        report = _check(db_url)
        assert report["consistent"], (round_, report["problems"])
        for name, count in _counts(db_url).items():
            # Speakers are committed whole: never a part of one's recordings.
            assert count == expected[name], (round_, name, count)
    done = _cli("enroll", "--manifest", str(path), "--db", db_url, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    assert summary["rejected"] == 0 and summary["accepted"] + summary["duplicates"] == len(rows)
    assert _counts(db_url) == dict(expected)
    report = _check(db_url)
    assert report["consistent"] and report["utterances"] == len(rows)
    again = _cli("enroll", "--manifest", str(path), "--db", db_url, "--json")
    assert json.loads(again.stdout)["summary"]["accepted"] == 0  # idempotent


@pytest.mark.slow
def test_three_concurrent_enrollers_lose_nothing(db_url, tmp_path):
    rows = manifest("librispeech") + manifest("vctk") + manifest("librispeech", "singles.jsonl")
    speakers = sorted({label for _, label in rows})
    parts = [[r for r in rows if speakers.index(r[1]) % 3 == k] for k in range(3)]
    paths = [_write_manifest(tmp_path / f"part{k}.jsonl", part) for k, part in enumerate(parts)]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "speakerdb", "enroll", "--manifest", str(p), "--db", db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for p in paths
    ]
    for child in children:
        _, err = child.communicate(timeout=900)
        assert child.returncode == 0, err
        assert "locked" not in err.lower()
    assert _counts(db_url) == dict(Counter(label for _, label in rows))
    assert _check(db_url)["consistent"]
