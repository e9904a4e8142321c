"""Hostile ONNX models (issue 16, defect 1): a tensor anywhere in the model -- a Constant
node's attribute, a sparse initializer, the body of an If/Loop/Scan nested to any depth, a
local function, a training graph -- may name a file whose bytes onnxruntime then reads
(against the working directory, for a model given as bytes). A voiceprint made by such a
model is the file's content. Each is refused before onnxruntime sees the model, through the
library, the CLI and the Python API, and nothing reaches a database.

Each hostile model is first shown to leak the file through onnxruntime alone (where this
onnxruntime accepts it), so the refusal is of a real exploit."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from helpers import ROOT, require_data
from speakerdb import SpeakerDB, load_model
from speakerdb.cli import cli
from speakerdb.errors import ModelError
from speakerdb.model._onnx import (
    MAX_GRAPH_DEPTH,
    OnnxEncoder,
    is_onnx_model,
    load_onnx,
    summarize_onnx,
)

ort = pytest.importorskip("onnxruntime", reason="the onnx family needs speakerdb[onnx]")
hostile = pytest.importorskip("hostile_onnx", reason="building the models needs the onnx package")

# Where onnxruntime 1.17+ reads the file when no check stops it (the others it refuses by
# itself, or ignores, but a reader must still not let them through).
LEAKS_THROUGH_ONNXRUNTIME = {
    "constant-node",
    "initializer",
    "sparse-initializer",
    "sparse-attribute",
    "if-branch",
    "nested-if-3",
    "loop-body",
    "scan-body",
    "local-function",
}


@pytest.fixture
def secret_cwd(tmp_path, monkeypatch):
    """A working directory holding key_admin.txt (and a copy one folder up); the secret."""
    work = tmp_path / "work"
    work.mkdir()
    secret = hostile.secret_text()
    (work / hostile.SECRET_NAME).write_bytes(secret)
    (tmp_path / hostile.SECRET_NAME).write_bytes(secret)
    monkeypatch.chdir(work)
    return work, secret


def _write(where: Path, place: str) -> Path:
    path = where / f"{place}.onnx"
    path.write_bytes(hostile.PLACES[place]().SerializeToString())
    return path


def _onnxruntime_output(data: bytes) -> bytes:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feats = np.zeros((1, 20, hostile.BINS), np.float32)
    return session.run(["embs"], {"feats": feats})[0].tobytes()


@pytest.mark.parametrize("place", sorted(hostile.PLACES))
def test_external_data_anywhere_is_refused_before_onnxruntime(place, secret_cwd):
    work, secret = secret_cwd
    path = _write(work, place)
    data = path.read_bytes()
    if place in LEAKS_THROUGH_ONNXRUNTIME:
        assert _onnxruntime_output(data) == secret, "the hostile model is not a real exploit"
    assert is_onnx_model(path), "recognised as ONNX, so the user is told why it is refused"
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    message = info.value.message
    assert "points to external files" in message and str(path) in message, message
    assert "\n" not in message and len(message) < 500


def test_onnxruntime_never_resolves_external_data_against_the_working_directory(secret_cwd):
    """The second fence: even a model the reader had let through (here built past the check)
    finds only an empty directory of ours, not the working directory."""
    work, secret = secret_cwd
    data = _write(work, "constant-node").read_bytes()
    assert _onnxruntime_output(data) == secret
    with pytest.raises(ModelError, match="onnxruntime cannot load the model"):
        OnnxEncoder(data, summarize_onnx(data), hashlib.sha256(data).hexdigest())


def _nested(depth: int) -> bytes:
    """A hand-written model whose graph nests ``depth`` If-like subgraphs (protobuf written
    here: the onnx package refuses to serialise such depths)."""

    def field(number: int, payload: bytes | int) -> bytes:
        def varint(n: int) -> bytes:
            out = bytearray()
            while True:
                out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
                n >>= 7
                if not n:
                    return bytes(out)

        if isinstance(payload, int):
            return varint(number << 3) + varint(payload)
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    graph = b""
    for _ in range(depth):
        attribute = field(1, b"then_branch") + field(6, graph) + field(20, 5)
        graph = field(1, field(4, b"If") + field(5, attribute))
    dims = b"".join(field(1, field(2, d)) for d in (b"B", b"T"))
    feats = field(1, b"feats") + field(2, field(1, field(1, 1) + field(2, dims)))
    graph += field(11, feats) + field(12, field(1, b"embs"))
    return field(1, 8) + field(7, graph) + field(8, field(2, 17))


def test_deeply_nested_subgraphs_are_refused_without_recursion_errors(tmp_path):
    path = tmp_path / "deep.onnx"
    path.write_bytes(_nested(MAX_GRAPH_DEPTH))
    summarize_onnx(path.read_bytes())  # as deep as allowed: read
    for depth in (MAX_GRAPH_DEPTH + 1, 5_000):
        path.write_bytes(_nested(depth))
        with pytest.raises(ModelError, match=f"nested deeper than {MAX_GRAPH_DEPTH}"):
            load_onnx(path)


# --- through the CLI and the Python API, on SQLite and PostgreSQL --------------------------------


def _stored(url: str) -> dict[str, int]:
    """Rows in the tables that would hold a voiceprint or the model (none when never made)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    engine = create_engine(make_url(url))
    try:
        names = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            return {
                table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("models", "speakers", "utterances")
                if table in names
            }
    finally:
        engine.dispose()


def test_cli_refuses_a_model_that_reads_the_working_directory(db_url, secret_cwd):
    """The report's reproduction: `speakerdb enroll mallory a.wav --model cwdleak.onnx`."""
    work, secret = secret_cwd
    model = _write(work, "constant-node").rename(work / "cwdleak.onnx")
    wav = require_data() / "vctk" / "p225" / "p225_003.wav"
    done = subprocess.run(
        [sys.executable, "-m", "speakerdb", "enroll", "mallory", str(wav), "--model", model.name,
         "--db", db_url],
        cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "points to external files" in done.stderr and secret.decode()[:40] not in done.stderr
    assert not any(_stored(db_url).values()), _stored(db_url)


def test_cli_embed_and_models_show_refuse_it(secret_cwd):
    work, secret = secret_cwd
    model = _write(work, "scan-body")
    wav = require_data() / "vctk" / "p225" / "p225_003.wav"
    for argv in (
        ["embed", str(wav), "--out", "leak.npy", "--model", model.name],
        ["models", "show", model.name],
    ):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "points to external files" in result.stderr, result.stderr
        assert secret.decode()[:40] not in result.output
    assert not (work / "leak.npy").exists()


def test_python_api_refuses_a_model_that_reads_the_working_directory(db_url, secret_cwd):
    work, _secret = secret_cwd
    wav = require_data() / "vctk" / "p225" / "p225_003.wav"
    for place in ("constant-node", "nested-if-3", "local-function"):
        model = _write(work, place)
        with pytest.raises(ModelError, match="points to external files"):
            load_model(model, "cpu")
        with pytest.raises(ModelError, match="points to external files"):  # noqa: SIM117
            with SpeakerDB.open(db_url, model=model) as db:
                db.enroll("mallory", [wav])
    assert not any(_stored(db_url).values()), _stored(db_url)
