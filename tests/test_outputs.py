"""Issue 16, defects 14, 15 and 18 (diarization's part): what the commands write.

14: every file of biometric data a command writes -- voiceprints (``embed --out``), turns
(``diarize --rttm``, ``--out-dir``), trial scores (``compare --pairs --out``, ``eval
--scores``) -- is mode 0600, also when it replaces a file of a looser mode, and is replaced
atomically. 15: ``diarize --manifest --out-dir`` never overwrites one recording's RTTM with
another's: names are unique and the same on every run, a recording listed twice is refused
before anything is written, and ``eval-diarization --hyp-dir`` finds the files. 18: a number
of voices the speech cannot hold is lowered, and the answer says so. Real speech, the real
CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import by_speaker, require_data
from speakerdb.cli import cli
from speakerdb.diarize._cluster import MIN_CLUSTER_WINDOWS


def run(*argv: str):
    return CliRunner().invoke(cli, list(argv))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    """The usual umask (022): a file created the ordinary way would be 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def speech():
    require_data()
    return by_speaker("vctk")


def _stale(path: Path) -> Path:
    """A file already there, world-readable, as an earlier run (or another tool) left it."""
    path.write_text("old contents\n")
    path.chmod(0o644)
    return path


# --- defect 14 ----------------------------------------------------------------------------------


def test_embeddings_are_written_0600(speech, tmp_path, loose_umask):
    files = [str(p) for p in speech["p225"][:2]]
    fresh, stale = tmp_path / "fresh.npy", _stale(tmp_path / "stale.npy")
    for out in (fresh, stale):
        result = run("embed", *files, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert mode(out) == 0o600, oct(mode(out))
        assert np.load(out).shape[0] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rttm_files_are_written_0600(speech, tmp_path, loose_umask):
    audio = speech["p225"][0]
    fresh, stale = tmp_path / "fresh.rttm", _stale(tmp_path / "stale.rttm")
    for out in (fresh, stale):
        result = run("diarize", str(audio), "--rttm", str(out))
        assert result.exit_code == 0, result.output
        assert mode(out) == 0o600 and out.read_text().startswith("SPEAKER "), oct(mode(out))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(audio)}) + "\n")
    out_dir = tmp_path / "rttms"
    out_dir.mkdir()
    _stale(out_dir / f"{audio.stem}.rttm")
    result = run("diarize", "--manifest", str(manifest), "--out-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    assert [mode(p) for p in out_dir.iterdir()] == [0o600]


def test_score_files_are_written_0600(speech, tmp_path, loose_umask):
    a, b, c = speech["p225"][0], speech["p225"][1], speech["p226"][0]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{a} {b}\n{a} {c}\n")
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {a} {b}\n0 {a} {c}\n")
    compared, scored = _stale(tmp_path / "compared.txt"), _stale(tmp_path / "scored.txt")
    result = run("compare", "--pairs", str(pairs), "--out", str(compared))
    assert result.exit_code == 0, result.output
    result = run("eval", str(trials), "--scores", str(scored), "--db", str(tmp_path / "db.sqlite"))
    assert result.exit_code == 0, result.output
    for out in (compared, scored):
        assert mode(out) == 0o600 and len(out.read_text().splitlines()) == 2, oct(mode(out))


# --- defect 15 ----------------------------------------------------------------------------------


def _same_names(tmp_path: Path, speech) -> tuple[Path, list[Path]]:
    """Two different recordings, both called call.wav, in two folders, and a manifest."""
    copies = []
    for folder, source in (("monday", speech["p225"][0]), ("tuesday", speech["p226"][0])):
        (tmp_path / folder).mkdir()
        copies.append(Path(shutil.copyfile(source, tmp_path / folder / "call.wav")))
    manifest = tmp_path / "calls.jsonl"
    manifest.write_text(
        "".join(json.dumps({"audio_filepath": f"{p.parent.name}/call.wav"}) + "\n" for p in copies)
    )
    return manifest, copies


def test_recordings_sharing_a_base_name_get_their_own_rttm(speech, tmp_path):
    manifest, copies = _same_names(tmp_path, speech)
    runs = []
    for attempt in ("first", "second"):
        out_dir = tmp_path / f"rttm-{attempt}"
        result = run("diarize", "--manifest", str(manifest), "--out-dir", str(out_dir), "--json")
        assert result.exit_code == 0, result.output
        assert "share a base name" in result.stderr
        documents = json.loads(result.stdout)
        written = sorted(p.name for p in out_dir.iterdir())
        assert len(written) == 2 and all(n.startswith("call-") for n in written), written
        assert sorted(Path(d["rttm"]).name for d in documents) == written
        for document in documents:
            lines = Path(document["rttm"]).read_text().splitlines()
            assert lines and all(line.split()[1] == document["file_id"] for line in lines)
        runs.append(written)
    assert runs[0] == runs[1]  # deterministic
    # eval-diarization finds each recording's own file: scored against itself, no error.
    for copy, document in zip(copies, documents, strict=True):
        reference = copy.with_suffix(".rttm")
        shutil.copyfile(document["rttm"], reference)
    scored = tmp_path / "scored.jsonl"
    scored.write_text(
        "".join(
            json.dumps({"audio_filepath": f"{p.parent.name}/call.wav", "rttm_filepath": str(r)})
            + "\n"
            for p, r in ((p, p.with_suffix(".rttm")) for p in copies)
        )
    )
    result = run(
        "eval-diarization",
        "--manifest",
        str(scored),
        "--hyp-dir",
        str(tmp_path / "rttm-first"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert [f["der"] for f in json.loads(result.stdout)["files"]] == [0.0, 0.0]


def test_a_recording_listed_twice_is_refused_before_anything_is_written(speech, tmp_path):
    audio = speech["p225"][0]
    manifest = tmp_path / "twice.jsonl"
    line = json.dumps({"audio_filepath": str(audio)}) + "\n"
    manifest.write_text(line + line)
    out_dir = tmp_path / "rttms"
    result = run("diarize", "--manifest", str(manifest), "--out-dir", str(out_dir))
    assert result.exit_code == 2 and "line 2" in result.stderr, result.output
    assert not out_dir.exists() or not list(out_dir.iterdir())


# --- defect 18: the number of voices --------------------------------------------------------------


def test_a_number_of_voices_the_speech_cannot_hold_is_lowered_and_said(speech):
    audio = str(speech["p225"][2])
    result = run("diarize", audio, "--num-speakers", "1000", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    limit = document["parameters"]["voice_limit"]
    assert 1 <= limit < 1000 and document["num_speakers"] <= limit
    assert len(document["notes"]) == 1 and "1000 voices" in document["notes"][0]
    assert f"at most {limit}" in document["notes"][0]
    assert "warning: asked for exactly 1000 voices" in result.stderr
    # The limit is what the windows can hold: one voice per MIN_CLUSTER_WINDOWS of them.
    windows = int(document["notes"][0].split("(")[1].split()[0])
    assert limit == max(1, windows // MIN_CLUSTER_WINDOWS)
    # A number within reach is used as given, without a note.
    result = run("diarize", audio, "--num-speakers", str(limit), "--json")
    document = json.loads(result.stdout)
    assert document["notes"] == [] and "voice_limit" not in document["parameters"]
    assert document["num_speakers"] <= limit
    result = run("diarize", audio, "--min-speakers", "1000", "--json")
    assert json.loads(result.stdout)["notes"], result.output


def test_the_conversation_of_the_issue():
    """--num-speakers 1000 on a 102 s conversation (four voices): a bounded number of
    voices, and a note."""
    audio = require_data() / "conversations" / "conv01.flac"
    result = run("diarize", str(audio), "--num-speakers", "1000", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    limit = document["parameters"]["voice_limit"]
    assert document["notes"] and document["num_speakers"] <= limit < 1000
    assert document["duration"] == pytest.approx(101.948, abs=0.01)
