"""The real command line, end to end, on real speech, on SQLite and PostgreSQL.

In-process with click's CliRunner (fast) and as a real subprocess (the installed entry point,
exit codes, stderr, start-up cost)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from helpers import broken_inputs, by_speaker, manifest, odd_but_valid_inputs, require_data
from speakerdb.cli import cli
from speakerdb.storage._location import resolve_location

ENROLLED = ("1688", "1998", "2033")


def run(*args: str, db: str | None = None):
    argv = list(args) + (["--db", db] if db else [])
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    return result


def run_json(*args: str, db: str | None = None):
    result = run(*args, "--json", db=db)
    return result.exit_code, json.loads(result.stdout)


def fingerprint(url: str) -> str:
    """Everything a change could touch: rows, hashes, embeddings, counter, index file."""
    location = resolve_location(url)
    engine = create_engine(location.url)
    digest = hashlib.sha256()
    with engine.connect() as conn:
        tables = {
            "speakers": "id, name, centroid, utterance_count, change_seq",
            "utterances": "id, speaker_id, audio_sha256, embedding",
            "changes": "speaker_id, seq, op",
            "store_state": "change_seq, model_id, index_kind",
            "calibrations": "normalization, threshold",
        }
        for table, columns in tables.items():
            try:
                rows = conn.execute(text(f"SELECT {columns} FROM {table} ORDER BY 1")).all()
            except Exception:
                rows = ["<no table>"]
            digest.update(repr(rows).encode())
    engine.dispose()
    if location.index_path is not None and location.index_path.exists():
        digest.update(location.index_path.read_bytes())
    elif location.index_folder is not None and location.index_folder.is_dir():
        # A server database's cache is named after the database (known once it is open).
        for path in sorted(location.index_folder.glob("*.faiss")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def enrolled_db(db_url):
    require_data()
    groups = by_speaker("librispeech")
    for name in ENROLLED:
        files = [str(p) for p in groups[name][:3]]
        result = run("enroll", name, *files, db=db_url)
        assert result.exit_code == 0, result.output
    return db_url


def _walk(command: click.Command, path: tuple[str, ...] = ()):
    """(path, command) for ``command`` and every command and group below it."""
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None, (*path, name)
            yield from _walk(sub, (*path, name))


def _trivial(text: str | None, name: str) -> bool:
    """No text, a few words, or the command's own name said again."""
    words = (text or "").replace(name, "").split()
    return len(words) < 3


def test_every_command_group_and_option_says_what_it_does():
    """Every command and group, at any depth, has a help text and a short help of its own
    (not a stub, not its name again); every option has help text; `--help` prints them."""
    found = list(_walk(cli))
    names = {" ".join(path) for path, _ in found}
    assert {"enroll", "verify", "db reembed", "keys create", "models show"} <= names
    for path, command in found:
        where = " ".join(("speakerdb", *path))
        assert not _trivial(command.help, path[-1] if path else "speakerdb"), where
        short = command.get_short_help_str(limit=200)
        assert not _trivial(short, path[-1] if path else "speakerdb"), (where, short)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert not _trivial(param.help, ""), (where, param.opts)
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, where
        shown = " ".join(result.output.split())
        assert " ".join((command.help or "").split()[:5]) in shown, where
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.help:
                assert " ".join(param.help.split()[:3]) in shown, (where, param.opts)


def test_enroll_verify_compare_identify_delete(enrolled_db):
    db = enrolled_db
    groups = by_speaker("librispeech")
    genuine = str(groups["1688"][5])
    impostor = str(groups["2414"][0])

    code, doc = run_json("verify", "1688", genuine, db=db)
    assert code == 0 and doc["accepted"] is True and doc["speaker"] == "1688"
    assert set(doc) >= {"score", "threshold", "accepted", "speaker", "model"}
    code, doc = run_json("verify", "1688", impostor, db=db)
    assert code == 1 and doc["accepted"] is False and doc["score"] < doc["threshold"]

    # Several files: one JSON list, in order; exit 0 only if all are accepted.
    code, docs = run_json("verify", "1688", genuine, str(groups["1688"][6]), impostor, db=db)
    assert code == 1 and [d["accepted"] for d in docs] == [True, True, False]
    assert [Path(d["source"]).name for d in docs] == [
        Path(genuine).name,
        groups["1688"][6].name,
        Path(impostor).name,
    ]

    code, doc = run_json("compare", genuine, str(groups["1688"][7]), db=db)
    assert code == 0 and doc["same_speaker"] is True
    code, doc = run_json("compare", genuine, impostor, db=db)
    assert code == 1 and doc["same_speaker"] is False

    code, doc = run_json("identify", str(groups["1998"][8]), "--top-k", "3", db=db)
    assert code == 0 and doc["best"] == "1998"
    assert doc["matches"][0]["name"] == "1998" and len(doc["matches"]) == 3
    singles = [str(p) for p, _ in manifest("librispeech", "singles.jsonl")[:6]]
    code, docs = run_json("identify", *singles, db=db)
    unknown = [d for d in docs if d["best"] is None]
    assert unknown, "never-enrolled voices should come out unknown"
    assert code == (1 if unknown else 0)
    for d in docs:
        assert (d["best"] is None) == (d["matches"][0]["score"] < d["threshold"])

    code, listing = run_json("speakers", "list", db=db)
    assert code == 0 and sorted(s["name"] for s in listing) == sorted(ENROLLED)
    assert all(s["utterances"] == 3 for s in listing)

    result = run("speakers", "delete", "1998", "--yes", db=db)
    assert result.exit_code == 0
    code, doc = run_json("identify", str(groups["1998"][8]), db=db)
    assert all(m["name"] != "1998" for m in doc["matches"])
    code, report = run_json("db", "check", db=db)
    assert code == 0 and report["consistent"] is True and report["speakers"] == 2


def test_text_output_and_rename(enrolled_db):
    groups = by_speaker("librispeech")
    result = run("verify", "2033", str(groups["2033"][4]), db=enrolled_db)
    assert result.exit_code == 0 and result.stdout.startswith("ACCEPTED")
    assert run("speakers", "rename", "2033", "carol", db=enrolled_db).exit_code == 0
    shown = run("speakers", "show", "carol", db=enrolled_db)
    assert shown.exit_code == 0 and "3 recordings" in shown.stdout
    assert run("verify", "2033", str(groups["2033"][4]), db=enrolled_db).exit_code == 2


def test_broken_inputs_exit_2_and_change_nothing(enrolled_db, tmp_path):
    db = enrolled_db
    groups = by_speaker("librispeech")
    good = str(groups["1688"][5])
    before = fingerprint(db)
    cases: list[list[str]] = []
    for kind, (path, _code) in broken_inputs(tmp_path).items():
        cases.append(["enroll", "1688", str(path)])
        cases.append(["enroll", f"new-{kind.replace(' ', '-')}", str(path)])
        cases.append(["verify", "1688", str(path)])
        cases.append(["identify", str(path)])
    bad_manifest = tmp_path / "bad.jsonl"
    bad_manifest.write_text('{"audio_filepath": "x.wav"}\nnot json\n')
    cases += [
        ["enroll", "--manifest", str(bad_manifest)],
        ["enroll", "--manifest", str(tmp_path / "missing.jsonl")],
        ["enroll", "1688", good, "--meta", "no-equals-sign"],
        ["enroll", "1688", good, "--mode", "replace"],
        ["enroll", "", good],
        ["verify", "nobody", good],
        ["verify", "1688", good, "--threshold", "nan"],
        ["verify", "1688", good, "--prior", "1.5"],
        ["verify", "1688", good, "--prior", "0.01", "--far", "0.01"],
        ["verify", "1688", good, "--far", "0.5"],
        ["verify", "1688", good, "--norm", "asnorm", "--prior", "0.01"],
        ["verify", "1688", good, "--device", "cuda:7"],
        ["identify", good, "--top-k", "0"],
        ["speakers", "delete", "nobody", "--yes"],
        ["speakers", "rename", "1688", "1998"],
        ["enroll", "1688", good, "--model", "no-such-model"],
    ]
    for argv in cases:
        result = run(*argv, db=db)
        assert result.exit_code == 2, (argv, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert errors and len(result.stderr.strip().splitlines()) <= len(argv), (
            argv,
            result.stderr,
        )
        assert "Traceback" not in result.output
    assert fingerprint(db) == before


def test_unknown_database_url_is_an_error():
    result = run("speakers", "list", db="mysql://nobody@nowhere/db")
    assert result.exit_code == 2 and result.stderr.startswith("error: unsupported database")


def test_odd_but_valid_inputs_enroll(db_url, tmp_path):
    require_data()
    files = odd_but_valid_inputs(tmp_path)
    for number, (kind, path) in enumerate(files.items()):
        result = run("enroll", f"odd-{number}", str(path), db=db_url)
        assert result.exit_code == 0, (kind, result.output)
    _, listing = run_json("speakers", "list", db=db_url)
    assert len(listing) == len(files)


def test_embed_writes_npy(tmp_path):
    import numpy as np

    require_data()
    files = [str(p) for p in by_speaker("vctk")["p225"][:3]]
    out = tmp_path / "x.npy"
    result = run("embed", *files, "--out", str(out))
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.shape == (3, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_compare_pairs_file(tmp_path):
    base = require_data() / "vctk"
    rows = [line.split() for line in (base / "trials.txt").read_text().splitlines()]
    chosen = [r for r in rows if r[0] == "1"][:5] + [r for r in rows if r[0] == "0"][:3]
    # Paths relative to the pairs file's folder.
    (tmp_path / "data").symlink_to(base)
    labelled = tmp_path / "trials.txt"
    labelled.write_text("".join(f"{r[0]} data/{r[1]} data/{r[2]}\n" for r in chosen))
    result = run("compare", "--pairs", str(labelled))
    assert result.exit_code == 0, result.output
    scores = result.stdout.strip().splitlines()
    assert len(scores) == 8 and all(len(line.split()) == 4 for line in scores)
    _, docs = run_json("compare", "--pairs", str(labelled))
    assert [d["label"] for d in docs] == [1] * 5 + [0] * 3
    assert all(d["same_speaker"] == (d["label"] == 1) for d in docs)
    unlabelled = tmp_path / "pairs.txt"
    unlabelled.write_text("".join(f"data/{r[1]} data/{r[2]}\n" for r in chosen))
    out = tmp_path / "scores.txt"
    assert run("compare", "--pairs", str(unlabelled), "--out", str(out)).exit_code == 0
    assert [line.split()[0] for line in out.read_text().splitlines()] == [
        line.split()[0] for line in scores
    ]


def _speakerdb(
    *args: str, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speakerdb", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_help_does_not_import_torch():
    probe = (
        "import sys\n"
        "from speakerdb.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'sqlalchemy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_subprocess_exit_codes_and_one_line_errors(tmp_path):
    require_data()
    db = str(tmp_path / "sub.sqlite")
    groups = by_speaker("vctk")
    enrolled = _speakerdb("enroll", "p225", *map(str, groups["p225"][:3]), "--db", db)
    assert enrolled.returncode == 0, enrolled.stderr
    accepted = _speakerdb("verify", "p225", str(groups["p225"][6]), "--db", db)
    assert accepted.returncode == 0
    rejected = _speakerdb("verify", "p225", str(groups["p226"][6]), "--db", db)
    assert rejected.returncode == 1
    missing = _speakerdb("verify", "p225", str(tmp_path / "nope.wav"), "--db", db)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.wav'}: no such file"]
    debug = _speakerdb("--debug", "verify", "nobody", str(groups["p225"][6]), "--db", db)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_file_names_with_newlines_and_escapes_stay_on_one_line(tmp_path):
    """A file name is data: it must not split text output or forge an error line."""
    require_data()
    db = str(tmp_path / "names.sqlite")
    groups = by_speaker("vctk")
    real = groups["p225"][6]
    tricky = tmp_path / "call\nerror: forged.wav"
    tricky.write_bytes(real.read_bytes())
    bidi = tmp_path / "evil\u202egnp.wav"
    missing = tmp_path / "gone\n.wav"
    assert _speakerdb("enroll", "p225", *map(str, groups["p225"][:3]), "--db", db).returncode == 0
    out = _speakerdb("verify", "p225", str(tricky), str(bidi), str(missing), "--db", db)
    assert out.returncode == 2
    # One result line for the readable file, one error line per broken file.
    assert len(out.stdout.splitlines()) == 1, out.stdout
    assert "call\\x0aerror: forged.wav" in out.stdout
    errors = out.stderr.splitlines()
    assert len(errors) == 2, out.stderr
    assert all(line.startswith("error: ") for line in errors)
    assert "evil\\u202egnp.wav" in out.stderr and "gone\\x0a.wav" in out.stderr
    assert "\u202e" not in out.stderr
    # JSON keeps the true names (it is unambiguous already).
    doc = json.loads(
        _speakerdb("verify", "p225", str(tricky), str(missing), "--db", db, "--json").stdout
    )
    assert doc[0]["source"] == str(tricky) and doc[1]["source"] == str(missing)
    enroll = _speakerdb("enroll", "p226", str(tricky), str(missing), "--db", db)
    assert len(enroll.stderr.splitlines()) >= 1
    assert all(line.startswith(("error: ", "warning: ")) for line in enroll.stderr.splitlines())
