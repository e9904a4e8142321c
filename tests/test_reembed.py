"""``speakerdb db reembed``: switching a database to another model and back, on SQLite and
PostgreSQL, through the real CLI (CliRunner, and a subprocess killed with SIGKILL midway).

The NeMo model is the small random-weight TitaNet fixture; every vector the database holds
after a switch is compared with the model's own embedding of the recording, and switching
back must restore the original GE2E vectors bit for bit (they were kept, not redone)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import by_speaker, require_data
from speakerdb import SpeakerDB, load_model
from speakerdb.cli import cli
from speakerdb.errors import ModelMismatchError

ROOT = Path(__file__).resolve().parent.parent
NEMO = ROOT / "tests" / "fixtures" / "models" / "nemo" / "titanet-small.nemo"
HUNG_CHILD_S = 900  # only a hung child takes this long to commit a batch


@pytest.fixture(scope="module")
def speech():
    require_data()
    return by_speaker("vctk")


@pytest.fixture(scope="module")
def nemo():
    return load_model(NEMO, "cpu")


@pytest.fixture(scope="module")
def ge2e():
    return load_model("ge2e", "cpu")


def run_json(*argv: str):
    result = CliRunner().invoke(cli, [*argv, "--json"])
    doc = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, doc, result


def enroll(url: str, groups: dict[str, list[Path]], metadata: dict | None = None) -> None:
    with SpeakerDB.open(url, model="ge2e", device="cpu") as db:
        for name, files in groups.items():
            report = db.enroll(name, files, metadata=(metadata or {}).get(name))
            assert all(i.status == "accepted" for i in report.inputs), report


def vectors(url: str) -> dict[str, np.ndarray]:
    """Every speaker's utterance embeddings, as the database holds them."""
    with SpeakerDB.open(url, read_only=True) as db:
        return {s.name: db.store.utterance_embeddings(s.name) for s in db.speakers()}


def sql(url: str, query: str) -> list:
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query)).all())
    finally:
        engine.dispose()


def other_vectors(url: str) -> dict[str, int]:
    rows = sql(
        url,
        "SELECT m.name, count(*) FROM reembeddings r JOIN models m ON m.id = r.model_id "
        "GROUP BY m.name",
    )
    return {name: int(n) for name, n in rows}


def check(url: str) -> dict:
    code, doc, result = run_json("db", "check", "--db", url)
    assert code == 0 and doc["consistent"], (result.output, doc and doc["problems"])
    return doc


def listing(url: str) -> list[dict]:
    code, doc, result = run_json("speakers", "list", "--db", url)
    assert code == 0, result.output
    return [
        {k: s[k] for k in ("name", "utterances", "speech_seconds", "metadata", "bandwidth_hz")}
        for s in doc
    ]


# --- there and back ---------------------------------------------------------------------------


def test_ge2e_to_nemo_and_back(db_url, speech, nemo, ge2e):
    groups = {name: speech[name][:3] for name in ("p225", "p226", "p227")}
    enroll(db_url, groups, metadata={"p226": {"team": "b", "n": 2}})
    from speakerdb.storage._countermeasure_record import (
        read_spoof_calibration,
        write_spoof_calibration,
    )

    spoof_fit = {"format": "speakerdb-spoof-calibration/1", "threshold": -1.5}
    with SpeakerDB.open(db_url) as db:
        db.store.set_threshold(0.7, "chosen on old trials")
        # The countermeasure's calibration is not the speaker model's: it survives.
        write_spoof_calibration(db.store, spoof_fit)
    before_listing = listing(db_url)
    original = vectors(db_url)
    probe = str(speech["p225"][6])

    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", db_url)
    assert code == 0, result.output
    assert doc["status"] == "switched" and doc["model"] == nemo.identity.label
    assert doc["previous_model"] == ge2e.identity.label
    assert (doc["recordings"], doc["reembedded"], doc["reused"]) == (9, 9, 0)
    assert doc["calibrations_reset"] == ["none"]
    assert "uncalibrated" in doc["decision_rule"]["text"]
    assert doc["old_vectors_kept"] == {ge2e.identity.label: 9}
    with SpeakerDB.open(db_url) as db:
        kept = read_spoof_calibration(db.store) or {}
        assert {k: kept.get(k) for k in spoof_fit} == spoof_fit
    check(db_url)
    assert listing(db_url) == before_listing  # names, metadata, recordings, speech intact

    # The database holds the NeMo model's own embeddings of the enrolled recordings.
    switched = vectors(db_url)
    for name, files in groups.items():
        own = nemo.embed_files(files)
        assert switched[name].shape == (3, nemo.dimension)
        assert np.min(np.sum(switched[name] * own, axis=1)) > 0.9999
    # verify / identify answer with the new model, its threshold, marked uncalibrated: a
    # recording p225 was enrolled with is accepted (part of the voiceprint: cosine 0.8), and
    # an unseen one is decided by the rule on the NeMo model's own score (random weights:
    # whether it passes is the fixture's business).
    code, doc, result = run_json("verify", "p225", str(speech["p225"][0]), "--db", db_url)
    assert code == 0 and doc["accepted"] is True, result.output
    code, doc, result = run_json("verify", "p225", probe, "--db", db_url)
    assert doc is not None, result.output
    assert code == (0 if doc["cosine"] >= doc["threshold"] else 1)
    assert doc["accepted"] is (code == 0)
    assert doc["model"] == nemo.identity.label
    assert doc["decision_rule"]["origin"] == "model_default"
    assert doc["threshold"] == pytest.approx(nemo.identity.default_threshold)
    assert "uncalibrated" in doc["decision_rule"]["text"]
    centroid = switched["p225"].mean(0) / np.linalg.norm(switched["p225"].mean(0))
    assert doc["cosine"] == pytest.approx(float(nemo.get_embedding(probe) @ centroid), abs=1e-4)
    code, doc, result = run_json("identify", str(speech["p226"][0]), "--db", db_url)
    assert code == 0 and doc["best"] == "p226", result.output  # enrolled: found as p226
    assert doc["model"] == nemo.identity.label

    # Back to GE2E: nothing is re-embedded, the original vectors return exactly.
    code, doc, result = run_json("db", "reembed", "--model", "ge2e", "--db", db_url)
    assert code == 0, result.output
    assert doc["status"] == "switched" and doc["model"] == ge2e.identity.label
    assert (doc["reembedded"], doc["reused"]) == (0, 9)
    assert doc["old_vectors_kept"] == {nemo.identity.label: 9}
    check(db_url)
    assert listing(db_url) == before_listing
    back = vectors(db_url)
    for name in groups:
        assert np.array_equal(back[name], original[name])
    # GE2E separates these speakers (EER 0 on vctk): p225's unseen recording is accepted.
    code, doc, result = run_json("verify", "p225", probe, "--db", db_url)
    assert code == 0 and doc["accepted"] is True, result.output
    assert doc["model"] == ge2e.identity.label
    code, doc, result = run_json("verify", "p225", str(speech["p226"][6]), "--db", db_url)
    assert code == 1 and doc["accepted"] is False, result.output

    # Already there: nothing happens.
    code, doc, result = run_json("db", "reembed", "--model", "ge2e", "--db", db_url)
    assert code == 0 and doc["status"] == "current", result.output


def test_a_process_opened_before_the_switch_refuses_to_mix(sqlite_url, speech):
    enroll(sqlite_url, {"p225": speech["p225"][:2], "p226": speech["p226"][:2]})
    with SpeakerDB.open(sqlite_url, device="cpu") as old:
        old.verify("p225", speech["p225"][5])  # loads GE2E and the index
        with SpeakerDB.open(sqlite_url, device="cpu") as other:
            assert other.reembed(NEMO).switched
        with pytest.raises(ModelMismatchError, match="switched"):
            old.verify("p225", speech["p225"][5])
        with pytest.raises(ModelMismatchError):  # from now on, as for any other model
            old.identify(speech["p225"][5])


# --- killed midway ----------------------------------------------------------------------------


def _committed_line(stream) -> int:
    """Read the child's stderr until it reports a committed batch; that batch's count."""
    for line in stream:
        if line.startswith("re-embedded ") and line.rstrip().endswith("(committed)"):
            return int(line.split()[1])
    raise AssertionError("the child ended without reporting a committed batch")


def test_killed_midway_resumes_and_switches_once(db_url, speech, nemo, ge2e, tmp_path):
    groups = {name: speech[name][:8] for name in ("p225", "p226", "p227")}
    enroll(db_url, groups)
    original = vectors(db_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "speakerdb", "db", "reembed", "--model", str(NEMO),
               "--db", db_url, "--commit-every", "4", "--device", "cpu"]  # fmt: skip
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        reported = _committed_line(child.stderr)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=HUNG_CHILD_S)
    assert reported == 4

    # Still on GE2E, consistent, answering; the committed vectors are kept aside.
    doc = check(db_url)
    assert doc["model"]["label"] == ge2e.identity.label
    # GE2E still decides, and separates these speakers (EER 0 on vctk): p225 is accepted.
    code, verified, result = run_json("verify", "p225", str(speech["p225"][9]), "--db", db_url)
    assert code == 0 and verified["model"] == ge2e.identity.label, result.output
    made = other_vectors(db_url).get("nemo", 0)
    assert reported <= made < 24 and made % 4 == 0
    assert all(np.array_equal(v, original[k]) for k, v in vectors(db_url).items())

    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=HUNG_CHILD_S
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "switched" and report["previous_model"] == ge2e.identity.label
    assert (report["reused"], report["reembedded"]) == (made, 24 - made)  # nothing redone
    check(db_url)
    switched = vectors(db_url)
    for name, files in groups.items():
        assert np.min(np.sum(switched[name] * nemo.embed_files(files), axis=1)) > 0.9999
    # Switched once: a rerun has nothing to do, and GE2E's vectors are all kept, once.
    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", db_url)
    assert code == 0 and doc["status"] == "current", result.output
    assert other_vectors(db_url) == {"ge2e": 24}

    code, doc, result = run_json("db", "reembed", "--model", "ge2e", "--db", db_url)
    assert code == 0 and (doc["reused"], doc["reembedded"]) == (24, 0), result.output
    assert all(np.array_equal(v, original[k]) for k, v in vectors(db_url).items())
    check(db_url)


# --- missing and changed recordings -----------------------------------------------------------


def test_missing_and_changed_recordings_block_the_switch(db_url, speech, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    copies: dict[str, list[Path]] = {}
    for name, count in (("p225", 3), ("p226", 2), ("p227", 1)):
        copies[name] = []
        for source in speech[name][:count]:
            target = folder / source.name
            shutil.copyfile(source, target)
            copies[name].append(target)
    enroll(db_url, copies)
    copies["p225"][0].unlink()  # gone
    shutil.copyfile(speech["p228"][0], copies["p226"][1])  # same path, other audio
    copies["p227"][0].unlink()  # p227's only recording
    before = listing(db_url)

    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", db_url)
    assert code == 2, result.output
    assert doc["status"] == "blocked" and doc["error"]["code"] == "recordings_missing"
    found = {(m["speaker"], Path(m["source"]).name, m["reason"]) for m in doc["missing"]}
    assert found == {
        ("p225", copies["p225"][0].name, "missing"),
        ("p226", copies["p226"][1].name, "changed"),
        ("p227", copies["p227"][0].name, "missing"),
    }
    assert doc["reembedded"] == 3  # the usable ones are kept for the next run
    assert check(db_url)["model"]["name"] == "ge2e" and listing(db_url) == before
    text_run = CliRunner().invoke(cli, ["db", "reembed", "--model", str(NEMO), "--db", db_url])
    assert text_run.exit_code == 2
    errors = [line for line in text_run.stderr.splitlines() if not line.startswith("re-embedded")]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "changed: p226" in text_run.stdout and "nothing switched" in text_run.stderr

    code, doc, result = run_json(
        "db", "reembed", "--model", str(NEMO), "--db", db_url, "--allow-missing"
    )
    assert code == 0 and doc["status"] == "switched", result.output
    assert (doc["reused"], doc["reembedded"], doc["dropped_recordings"]) == (3, 0, 3)
    assert doc["deleted_speakers"] == ["p227"]
    check(db_url)
    assert {s["name"]: s["utterances"] for s in listing(db_url)} == {"p225": 2, "p226": 1}


# --- dropping the old vectors -----------------------------------------------------------------


def test_drop_old_removes_the_previous_vectors(sqlite_url, speech):
    enroll(sqlite_url, {"p225": speech["p225"][:2], "p226": speech["p226"][:2]})
    old = vectors(sqlite_url)
    path = Path(make_url(sqlite_url).database)

    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", sqlite_url)
    assert code == 0 and doc["status"] == "switched", result.output
    assert other_vectors(sqlite_url) == {"ge2e": 4}
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    kept = b"".join(p.read_bytes() for p in files)
    assert all(row.tobytes()[:64] in kept for rows in old.values() for row in rows)

    code, doc, result = run_json("db", "reembed", "--drop-old", "--db", sqlite_url)
    assert code == 0 and doc["status"] == "dropped", result.output
    assert doc["old_vectors_dropped"] == 4 and other_vectors(sqlite_url) == {}
    check(sqlite_url)
    # No byte of a GE2E vector survives in the database, its log or the index file.
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    data = b"".join(p.read_bytes() for p in files)
    for name, rows in old.items():
        for row in rows:
            assert row.tobytes()[:64] not in data, name
    # Switching back now re-embeds from the files.
    code, doc, result = run_json("db", "reembed", "--model", "ge2e", "--db", sqlite_url)
    assert code == 0 and (doc["reused"], doc["reembedded"]) == (0, 4), result.output
    check(sqlite_url)


def test_recordings_enrolled_while_reembedding_are_switched_too(sqlite_url, speech, nemo):
    enroll(sqlite_url, {"p225": speech["p225"][:4], "p226": speech["p226"][:4]})
    late = speech["p225"][6]
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 1:  # another writer enrolls while the first batch is committed
            with SpeakerDB.open(sqlite_url, device="cpu") as other:
                assert other.enroll("p225", [late]).inputs[0].status == "accepted"

    with SpeakerDB.open(sqlite_url, device="cpu") as db:
        report = db.reembed(NEMO, progress=progress, commit_every=2)
    assert report.switched and report.reembedded == 9, report
    assert seen[0] == (2, 8) and seen[-1][0] == 9
    check(sqlite_url)
    held = vectors(sqlite_url)["p225"]
    assert held.shape == (5, nemo.dimension)
    assert float(held[-1] @ nemo.get_embedding(late)) > 0.9999


def test_deleting_a_speaker_deletes_its_kept_vectors(db_url, speech):
    enroll(db_url, {"p225": speech["p225"][:2], "p226": speech["p226"][:3]})
    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", db_url)
    assert code == 0 and doc["status"] == "switched", result.output
    assert other_vectors(db_url) == {"ge2e": 5}
    code, _doc, result = run_json("speakers", "delete", "p226", "--yes", "--db", db_url)
    assert code == 0, result.output
    assert other_vectors(db_url) == {"ge2e": 2}  # its GE2E vectors went with it
    check(db_url)


def test_check_notices_vectors_of_the_own_model_kept_aside(sqlite_url, speech):
    enroll(sqlite_url, {"p225": speech["p225"][:2]})
    code, doc, result = run_json("db", "reembed", "--model", str(NEMO), "--db", sqlite_url)
    assert code == 0 and doc["status"] == "switched", result.output
    engine = create_engine(make_url(sqlite_url))
    with engine.begin() as conn:  # a switch that went wrong would leave this
        conn.execute(text("UPDATE reembeddings SET model_id = (SELECT model_id FROM store_state)"))
    engine.dispose()
    code, doc, result = run_json("db", "check", "--db", sqlite_url)
    assert code == 1 and any("kept aside" in p for p in doc["problems"]), result.output
