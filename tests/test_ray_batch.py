"""``speakerdb enroll --manifest M --ray ADDRESS`` on a real Ray cluster: a head and a second
node process on this machine (one CPU each), started here and stopped at the end even on
failure. The same manifest of real speech (with unusable files and a repeated recording) is
enrolled by the one-machine command, by ``--ray local`` into SQLite, and through the cluster
into PostgreSQL while a worker process is killed mid-job and then the driver too, and rerun:
the databases must hold the same speakers, recordings and vectors (cosine >= 0.9999), with
the same rejections and exit codes.

Kills are timed from events, never from guesses: a worker writes a marker file (its pid)
after its first batch (``SPEAKERDB_RAY_MARKERS``), and the driver is killed once the database
holds a committed speaker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest, require_data
from speakerdb.errors import SpeakerDBError
from speakerdb.storage._store import EnrollmentStore

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
HUNG_S = 600  # only a hung cluster or child takes this long to reach the next event
FILES_PER_TASK = "3"
ENROLL = [sys.executable, "-m", "speakerdb", "enroll", "--manifest"]


@dataclass(frozen=True)
class Cluster:
    address: str
    markers: Path
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(what: str, condition, child: subprocess.Popen | None = None) -> None:
    """Poll an event (a file appearing, a row committed), bounded by HUNG_S."""
    deadline = time.monotonic() + HUNG_S
    while not condition():
        if child is not None and child.poll() is not None:
            raise AssertionError(f"exited ({child.returncode}) before {what}")
        assert time.monotonic() < deadline, f"no {what} after {HUNG_S} s"
        time.sleep(0.05)  # polling an event, not a guess at how long it takes


def _started(log: Path) -> bool:
    return log.is_file() and "Ray runtime started" in log.read_text(errors="replace")


def _stop(process: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` and everything it started: its own process group, made
    for it alone (``start_new_session``), so nothing else on the machine is touched."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the leader
    process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ray")
    markers = root / "markers"
    markers.mkdir()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        RAY_AUTH_MODE="disabled",  # a test cluster on this machine only
        RAY_USAGE_STATS_ENABLED="0",
        SPEAKERDB_RAY_MARKERS=str(markers),
    )
    port = _free_port()
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
    commands = [
        [str(RAY), "start", "--head", "--port", str(port), "--include-dashboard", "false"],
        [str(RAY), "start", "--address", f"127.0.0.1:{port}"],
    ]
    processes: list[subprocess.Popen] = []
    try:
        for number, command in enumerate(commands):
            log = root / f"node{number}.log"
            with log.open("w") as out:
                extra = ["--temp-dir", str(root / "tmp")] if number == 0 else []
                processes.append(
                    subprocess.Popen(
                        [*command, *common, *extra],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            _wait_until(f"ray node {number}", lambda log=log: _started(log), processes[-1])
        yield Cluster(f"127.0.0.1:{port}", markers, env)
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def speech_manifest(tmp_path_factory) -> Path:
    """vctk (4 speakers x 10) plus a missing and an empty file and a repeated recording."""
    folder = tmp_path_factory.mktemp("manifest")
    rows = manifest("vctk")
    (folder / "empty.wav").write_bytes(b"")
    rows += [(folder / "missing.wav", rows[0][1]), (folder / "empty.wav", rows[10][1])]
    rows.append(rows[3])
    path = folder / "speakers.jsonl"
    path.write_text(
        "".join(json.dumps({"audio_filepath": str(p), "label": s}) + "\n" for p, s in rows)
    )
    return path


def _enroll(db_url: str, manifest_path: Path, *ray: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [*ENROLL, str(manifest_path), "--db", db_url, "--json", *ray],
        capture_output=True,
        text=True,
        timeout=HUNG_S,
        env=env if env is not None else os.environ.copy(),
    )


@pytest.fixture(scope="module")
def one_machine(speech_manifest, tmp_path_factory):
    """The one-machine command's result: (process, database URL)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('one') / 'one.sqlite'}"
    result = _enroll(url, speech_manifest)
    assert result.returncode == 2, result.stderr  # two unusable files
    return result, url


def _contents(url: str) -> dict[str, dict[str, np.ndarray]]:
    """speaker -> {audio sha256: stored vector}; fails on a sha256 stored twice."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with EnrollmentStore.open(url, read_only=True) as store:
        for record in store.speakers():
            hashes = [u.sha256 for u in store.utterances(record.name)]
            assert len(set(hashes)) == len(hashes), f"{record.name}: audio stored twice"
            vectors = store.utterance_embeddings(record.name)
            out[record.name] = dict(zip(hashes, vectors, strict=True))
    return out


def _same_database(url: str, reference: str) -> None:
    got, want = _contents(url), _contents(reference)
    assert sorted(got) == sorted(want)
    for name, vectors in want.items():
        assert sorted(got[name]) == sorted(vectors), name
        for sha, vector in vectors.items():
            cosine = float(np.dot(got[name][sha], vector))
            assert cosine >= 0.9999, f"{name} {sha[:12]}: cosine {cosine}"


def _statuses(document: dict) -> dict[str, list[tuple[str, str | None]]]:
    return {
        s["speaker"]: [(i["source"], i["status"], i["reason"]) for i in s["inputs"]]
        for s in document["speakers"]
    }


def _rejections(document: dict) -> set[tuple[str, str]]:
    return {
        (i["source"], i["reason"])
        for s in document["speakers"]
        for i in s["inputs"]
        if i["status"] == "rejected"
    }


def test_local_ray_into_sqlite_equals_one_machine(speech_manifest, one_machine, tmp_path):
    reference, reference_url = one_machine
    url = f"sqlite:///{tmp_path / 'ray.sqlite'}"
    env = {k: v for k, v in os.environ.items() if k != "SPEAKERDB_RAY_MARKERS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    result = _enroll(url, speech_manifest, "--ray", "local", "--ray-workers", "2", env=env)
    assert result.returncode == reference.returncode, result.stderr
    got, want = json.loads(result.stdout), json.loads(reference.stdout)
    assert got["summary"] == want["summary"]
    assert _statuses(got) == _statuses(want)
    assert len(_rejections(got)) == 2
    # the same lines on stderr: one per rejected file
    assert sorted(line for line in result.stderr.splitlines() if line.startswith("error:")) == (
        sorted(line for line in reference.stderr.splitlines() if line.startswith("error:"))
    )
    _same_database(url, reference_url)


def _committed(url: str) -> int:
    try:
        with EnrollmentStore.open(url, read_only=True) as store:
            return store.counts()[0]
    except SpeakerDBError:
        return 0  # not created yet


def _ray(cluster: Cluster) -> list[str]:
    return ["--ray", cluster.address, "--ray-files-per-task", FILES_PER_TASK]


def _start(cluster: Cluster, manifest_path: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*ENROLL, str(manifest_path), "--db", url, "--json", *_ray(cluster)],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cluster_into_postgresql_with_a_worker_killed_mid_job(
    cluster, speech_manifest, one_machine, pg_url
):
    reference, reference_url = one_machine
    # Workers wait after their first batch until released: the job cannot finish before the
    # kill, however slow this process is to notice the marker on a loaded machine.
    hold, release = cluster.markers / "hold", cluster.markers / "release"
    release.unlink(missing_ok=True)
    hold.touch()
    before = set(os.listdir(cluster.markers))
    driver = _start(cluster, speech_manifest, pg_url)
    try:
        _wait_until(
            "a worker's first batch", lambda: set(os.listdir(cluster.markers)) - before, driver
        )
        assert _committed(pg_url) < len(_contents(reference_url))
        victim = int(min(set(os.listdir(cluster.markers)) - before))
        os.kill(victim, signal.SIGKILL)  # Ray restarts the actor and reruns its batch
        release.touch()
        stdout, stderr = driver.communicate(timeout=HUNG_S)
    finally:
        release.touch()
        hold.unlink(missing_ok=True)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == reference.returncode, stderr
    got, want = json.loads(stdout), json.loads(reference.stdout)
    assert got["summary"] == want["summary"]
    assert _statuses(got) == _statuses(want)
    _same_database(pg_url, reference_url)


def test_cluster_job_resumes_after_the_driver_is_killed(
    cluster, speech_manifest, one_machine, pg_url
):
    reference, reference_url = one_machine
    driver = _start(cluster, speech_manifest, pg_url)
    try:
        _wait_until("a committed speaker", lambda: _committed(pg_url) >= 1, driver)
        driver.kill()
        driver.communicate()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == -signal.SIGKILL
    kept = _committed(pg_url)
    assert 1 <= kept < len(_contents(reference_url)), "killed too late to test a resume"
    rerun = _enroll(
        pg_url,
        speech_manifest,
        *_ray(cluster),
        env=cluster.env,
    )
    assert rerun.returncode == reference.returncode, rerun.stderr
    document = json.loads(rerun.stdout)
    assert _rejections(document) == _rejections(json.loads(reference.stdout))
    # what the killed run committed is recognised, not stored again
    assert document["summary"]["duplicates"] > json.loads(reference.stdout)["summary"]["duplicates"]
    _same_database(pg_url, reference_url)


def test_sqlite_is_refused_for_a_cluster(cluster, speech_manifest, tmp_path):
    result = _enroll(
        f"sqlite:///{tmp_path / 'x.sqlite'}", speech_manifest, "--ray", cluster.address
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --ray 127.0.0.1:")
    assert "PostgreSQL" in result.stderr and "Traceback" not in result.stderr


def test_embed_on_the_cluster_equals_one_machine(cluster, speech_manifest, tmp_path):
    files = [
        json.loads(line)["audio_filepath"] for line in speech_manifest.read_text().splitlines()
    ]
    command = [sys.executable, "-m", "speakerdb", "embed", *files[:5], "--json"]
    one = subprocess.run(
        [*command, "--out", str(tmp_path / "one.npy")], capture_output=True, text=True
    )
    got = subprocess.run(
        [*command, "--out", str(tmp_path / "ray.npy"), *_ray(cluster)],
        capture_output=True,
        text=True,
        env=cluster.env,
    )
    assert one.returncode == got.returncode == 0, got.stderr
    document = json.loads(got.stdout)
    assert document == {**json.loads(one.stdout), "out": str(tmp_path / "ray.npy")}
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "ray.npy")
    assert a.shape == b.shape == (5, 256)
    assert float((a * b).sum(axis=1).min()) >= 0.9999
    assert (tmp_path / "ray.npy").stat().st_mode & 0o777 == 0o600


def test_help_does_not_import_ray():
    probe = (
        "import sys\n"
        "from speakerdb.cli import main\n"
        "for args in (['--help'], ['enroll', '--help'], ['embed', '--help'],"
        " ['diarize', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print('ray' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "--ray ADDRESS" in result.stdout
    assert result.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "nowhere"], "expected local, auto, ray://HOST:PORT or HOST:PORT"),
        (["--ray", "local", "--ray-workers", "0"], "--ray-workers"),
    ],
)
def test_bad_ray_options_are_usage_errors(args, message, speech_manifest, tmp_path):
    result = _enroll(f"sqlite:///{tmp_path / 'x.sqlite'}", speech_manifest, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.sqlite").exists() or _committed(f"sqlite:///{tmp_path}/x.sqlite") == 0


NEMO = REPO / "tests" / "fixtures" / "models" / "nemo" / "titanet-small.nemo"


def test_reembed_on_the_cluster_equals_one_machine(cluster, pg_url, tmp_path):
    """GE2E -> the small NeMo fixture, one recording gone since enrollment: both list it
    and switch with --allow-missing to the same vectors."""
    rows = manifest("vctk")
    gone = tmp_path / "gone.wav"
    gone.write_bytes(rows[20][0].read_bytes())
    chosen = [*rows[:3], *rows[10:13], (gone, rows[10][1])]
    listing = tmp_path / "m.jsonl"
    listing.write_text(
        "".join(json.dumps({"audio_filepath": str(p), "label": s}) + "\n" for p, s in chosen)
    )
    one_url = f"sqlite:///{tmp_path / 'one.sqlite'}"
    for url in (one_url, pg_url):
        assert _enroll(url, listing).returncode == 0
    gone.unlink()
    reembed = [sys.executable, "-m", "speakerdb", "db", "reembed", "--model", str(NEMO), "--json"]
    answers = {}
    for url, extra in ((one_url, []), (pg_url, _ray(cluster))):
        switched = subprocess.run(
            [*reembed, "--db", url, "--allow-missing", *extra],
            capture_output=True,
            text=True,
            env=cluster.env,
        )
        assert switched.returncode == 0, switched.stderr
        answers[url] = json.loads(switched.stdout)
    one, got = answers[one_url], answers[pg_url]
    assert [m["reason"] for m in got["missing"]] == ["missing"]
    for key in ("status", "recordings", "switched_recordings", "dropped_recordings", "model"):
        assert got[key] == one[key], key
    assert got["missing"] == one["missing"]
    _same_database(pg_url, one_url)


def test_a_worker_with_other_weights_fails_the_job_with_the_model_error(cluster, monkeypatch):
    import dataclasses

    from speakerdb.enroll._ray_batch import RayOptions, ray_iter_embed
    from speakerdb.errors import ModelMismatchError
    from speakerdb.model._registry import model_identity

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    other = dataclasses.replace(model_identity("ge2e"), weights_sha256="f" * 64)
    path = str(manifest("vctk")[0][0])
    with pytest.raises(ModelMismatchError, match="not the job's model ge2e:ffffffffffff"):
        list(ray_iter_embed(RayOptions(cluster.address, 1, 1), other, [path], [()]))


# --- diarize --manifest --ray ---------------------------------------------------------------

DIARIZE = [sys.executable, "-m", "speakerdb", "diarize", "--json"]
CONVERSATIONS = ("conv04", "conv08")  # the shortest (67 s, 66 s), 3 and 4 voices, one overlapped


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> tuple[Path, Path]:
    """(the diarization manifest: two real conversations and a missing file, the
    enrollment manifest of the conversations' known speakers), with absolute paths."""
    base = require_data() / "conversations"
    folder = tmp_path_factory.mktemp("conversations")
    rows = [json.loads(line) for line in (base / "manifest.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if Path(r["audio_filepath"]).stem in CONVERSATIONS]
    assert len(chosen) == len(CONVERSATIONS)
    for row in chosen:
        row["audio_filepath"] = str(base / row["audio_filepath"])
        row["rttm_filepath"] = str(base / row["rttm_filepath"])
    chosen.append({"audio_filepath": str(folder / "missing.flac"), "label": "infer"})
    listing = folder / "conversations.jsonl"
    listing.write_text("".join(json.dumps(row) + "\n" for row in chosen))
    speakers = folder / "speakers.jsonl"
    speakers.write_text(
        "".join(
            json.dumps({**row, "audio_filepath": str(base / row["audio_filepath"])}) + "\n"
            for row in map(json.loads, (base / "enroll.jsonl").read_text().splitlines())
        )
    )
    return listing, speakers


def _diarize(url: str, listing: Path, out_dir: Path, *ray: str, env: dict[str, str]):
    return subprocess.run(
        [*DIARIZE, "--manifest", str(listing), "--out-dir", str(out_dir), "--db", url, *ray],
        capture_output=True,
        text=True,
        timeout=HUNG_S,
        env=env,
    )


@pytest.fixture(scope="module")
def diarized_one_machine(conversations, tmp_path_factory):
    """The one-machine command's answer: (process, SQLite URL of the enrolled speakers,
    its RTTM folder)."""
    listing, speakers = conversations
    folder = tmp_path_factory.mktemp("diarized")
    url = f"sqlite:///{folder / 'team.sqlite'}"
    assert _enroll(url, speakers).returncode == 0
    result = _diarize(url, listing, folder / "rttm", env=os.environ.copy())
    assert result.returncode == 2, result.stderr  # the missing file
    return result, url, folder / "rttm"


def _same_diarization(result, out_dir: Path, reference, reference_dir: Path) -> None:
    """Same exit code, error lines, per-recording JSON and RTTM files (mode 0600)."""
    assert result.returncode == reference.returncode, result.stderr
    got, want = json.loads(result.stdout), json.loads(reference.stdout)
    for document in (*got, *want):
        document.pop("rttm", None)  # the folder differs
    assert got == want
    assert [d["error"]["code"] for d in got if "error" in d] == ["file_not_found"]
    names = sorted(p.name for p in reference_dir.iterdir())
    assert names == [f"{name}.rttm" for name in CONVERSATIONS]
    assert sorted(p.name for p in out_dir.iterdir()) == names
    for name in names:
        assert (out_dir / name).read_text() == (reference_dir / name).read_text(), name
        assert (out_dir / name).stat().st_mode & 0o777 == 0o600
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in reference.stderr.splitlines() if line.startswith("error:")]
    assert any(s["name"] for d in want if "speakers" in d for s in d["speakers"])  # some named


def test_diarize_manifest_with_local_ray_equals_one_machine(diarized_one_machine, conversations):
    reference, url, reference_dir = diarized_one_machine
    out_dir = reference_dir.parent / "local"
    env = {k: v for k, v in os.environ.items() if k != "SPEAKERDB_RAY_MARKERS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    result = _diarize(url, conversations[0], out_dir, "--ray", "local", env=env)
    _same_diarization(result, out_dir, reference, reference_dir)


def test_diarize_manifest_on_the_cluster_from_postgresql_equals_one_machine(
    cluster, diarized_one_machine, conversations, pg_url, tmp_path
):
    reference, _, reference_dir = diarized_one_machine
    listing, speakers = conversations
    assert _enroll(pg_url, speakers).returncode == 0
    out_dir = tmp_path / "rttm"
    result = _diarize(
        pg_url, listing, out_dir, "--ray", cluster.address, "--ray-workers", "2", env=cluster.env
    )
    _same_diarization(result, out_dir, reference, reference_dir)


def test_diarize_ray_needs_a_manifest(tmp_path):
    result = subprocess.run(
        [*DIARIZE, str(tmp_path / "a.wav"), "--ray", "local"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --ray applies to --manifest diarization only")


def test_messages_ray_holds_back_until_shutdown_never_reach_stdout(cluster, monkeypatch, capfd):
    """What Ray prints when a worker dies ("(raylet) Task ... submit failed") is held back by
    its log de-duplicator when repeated and flushed at ``ray.shutdown``: on stderr, never on
    stdout, which carries the ``--json`` report."""
    from ray._private import worker as ray_worker

    from speakerdb.enroll._ray_batch import RayOptions, ray_session

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    message = "Task MapWorker(_EmbedBatch).submit failed. There are infinite retries remaining"
    with ray_session(RayOptions(cluster.address, 1, 1)):
        for _ in range(3):  # published the way Ray's error listener publishes it
            ray_worker.print_to_stdstream(
                {"lines": [message], "pid": "raylet", "is_err": False}, ignore_prefix=False
            )
    out, err = capfd.readouterr()
    assert "submit failed" not in out
    assert "repeated 2x" in err  # the held-back copies were flushed, to stderr
