"""The "onnx" model family: WeSpeaker-exported ONNX models run by onnxruntime with
WeSpeaker's front end, checked against WeSpeaker's own features + the exported graph, and
refused when hostile, malformed or not a WeSpeaker export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from encoder_driver import embed_prepared, prepare_file
from family_parity import Reference, assert_discriminative, assert_parity, input_paths

from helpers import ROOT, require_data
from speakerdb.errors import ModelError, TooLittleSpeechError
from speakerdb.model._onnx import MAX_ONNX_BYTES, is_onnx_model, load_onnx

pytest.importorskip("onnxruntime", reason="the onnx family needs speakerdb[onnx]")

FIXTURES = ROOT / "tests" / "fixtures" / "models" / "onnx"
MODEL = FIXTURES / "wespeaker-resnet34-small.onnx"
REFERENCE = FIXTURES / "reference-small.npz"


@pytest.fixture(scope="module")
def encoder():
    return load_onnx(MODEL)


@pytest.fixture(scope="module")
def reference():
    return Reference(REFERENCE)


def test_fixture_loads(encoder):
    assert encoder.family == "onnx"
    assert encoder.dimension == 128
    assert encoder.num_mel_bins == 80
    assert encoder.sample_rate == 16_000
    assert encoder.default_threshold == 0.0
    assert "uncalibrated" in encoder.threshold_note
    assert encoder.exact_padding is False
    assert len(encoder.weights_sha256) == 64


def test_recognised_by_content_not_extension(tmp_path):
    assert is_onnx_model(MODEL)
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(MODEL.read_bytes())
    assert is_onnx_model(renamed)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n" * 100)
    assert not is_onnx_model(text)
    assert not is_onnx_model(tmp_path)
    assert not is_onnx_model(tmp_path / "missing.onnx")
    assert not is_onnx_model(ROOT / "tests" / "fixtures" / "models" / "speechbrain")


def test_reference_model_is_discriminative(reference):
    assert_discriminative(reference)


def test_parity_with_wespeaker(encoder, reference):
    """A quarter of the original recordings (every set), a twentieth of the 8 kHz, 48 kHz and MP3
    versions; the slow test below takes every input."""
    data = require_data()
    assert_parity(encoder, reference, data, {"orig": 4, "8k": 20, "48k": 20, "mp3": 20}, "onnx")


@pytest.mark.slow
def test_parity_with_wespeaker_every_input(encoder, reference):
    data = require_data()
    assert_parity(encoder, reference, data, {"orig": 1, "8k": 1, "48k": 1, "mp3": 1}, "onnx")


def _prepared(encoder, reference, count=16):
    data = require_data()
    items = [i for i in reference.items("orig") if i.set in ("librispeech", "vctk")][::9][:count]
    return [prepare_file(encoder, p) for p in input_paths(reference, items, data)]


def test_padding_changes_the_graph_output(encoder, reference):
    """Why exact_padding is False: the graph pools over every frame it gets, padding too."""
    prepared = _prepared(encoder, reference, 8)
    chunks = [c[0] for c in prepared]
    longest = max(c.shape[0] for c in chunks)
    padded = torch.zeros(len(chunks), longest, chunks[0].shape[1])
    for i, chunk in enumerate(chunks):
        padded[i, : chunk.shape[0]] = chunk
    raw = encoder._run(padded.numpy())
    alone = np.concatenate([encoder._run(c[None].numpy()) for c in chunks])
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    cos = (raw * alone).sum(axis=1)
    assert cos.min() < 0.99, cos


def test_equal_length_batching_is_exact(encoder, reference):
    """Sixteen equal-length chunks in one run give what each gives alone."""
    prepared = _prepared(encoder, reference, 16)
    length = min(c[0].shape[0] for c in prepared)
    chunks = torch.stack([c[0][:length] for c in prepared])
    together = encoder.encode(chunks, torch.full((16,), length)).numpy()
    alone = np.concatenate(
        [encoder.encode(c[None], torch.tensor([length])).numpy() for c in chunks]
    )
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_mixed_lengths_are_encoded_separately(encoder, reference):
    """encode() never lets padding reach the graph, even when given a padded batch."""
    prepared = _prepared(encoder, reference, 16)
    alone = embed_prepared(encoder, prepared, batch_size=1)
    chunks = [c[0] for c in prepared]
    lengths = torch.tensor([c.shape[0] for c in chunks])
    padded = torch.zeros(len(chunks), int(lengths.max()), chunks[0].shape[1])
    for i, chunk in enumerate(chunks):
        padded[i, : chunk.shape[0]] = chunk
    together = encoder.encode(padded, lengths).numpy()
    together /= np.linalg.norm(together, axis=1, keepdims=True)
    assert (alone * together).sum(axis=1).min() >= 0.9999


def test_too_short_input_is_refused(encoder):
    with pytest.raises(TooLittleSpeechError):
        encoder.prepare(np.zeros(1200, np.float32))


# --- hand-made ONNX files (protobuf written here; the onnx package is not needed) ---------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(
        _field(1, _field(1, d) if isinstance(d, int) else _field(2, d.encode())) for d in dims
    )
    tensor = _field(1, 1) + _field(2, shape)  # elem_type FLOAT, shape
    return _field(1, name.encode()) + _field(2, _field(1, tensor))


def _node(op: str, inputs: list[str], outputs: list[str], domain: str = "") -> bytes:
    axes = _field(1, b"axes") + _field(8, 1) + _field(20, 7)  # INTS [1]
    keepdims = _field(1, b"keepdims") + _field(3, 0) + _field(20, 2)  # INT 0
    body = b"".join(_field(1, i.encode()) for i in inputs)
    body += b"".join(_field(2, o.encode()) for o in outputs) + _field(4, op.encode())
    body += _field(5, axes) + _field(5, keepdims)
    return body + (_field(7, domain.encode()) if domain else b"")


def _model(
    *,
    input_name: str = "feats",
    output_name: str = "embs",
    dims: tuple = ("B", "T", 80),
    op: str = "ReduceMean",
    domain: str = "",
    initializer: bytes = b"",
) -> bytes:
    """feats (B, T, 80) -> embs = mean over T: a minimal WeSpeaker-shaped graph."""
    graph = _field(1, _node(op, [input_name], [output_name], domain)) + _field(2, b"g")
    if initializer:
        graph += _field(5, initializer)
    graph += _field(11, _value_info(input_name, list(dims)))
    graph += _field(12, _value_info(output_name, ["B", 80]))
    opsets = _field(8, _field(2, 14))
    if domain:
        opsets += _field(8, _field(1, domain.encode()) + _field(2, 1))
    return _field(1, 8) + _field(2, b"speakerdb-test") + _field(7, graph) + opsets


def test_hand_made_graph_runs(tmp_path):
    path = tmp_path / "mean.model"
    path.write_bytes(_model())
    assert is_onnx_model(path)
    encoder = load_onnx(path)
    assert encoder.dimension == 80
    feats = torch.randn(2, 50, 80)
    out = encoder.encode(feats, torch.tensor([50, 50]))
    torch.testing.assert_close(out, feats.mean(dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_name": "x"}, "inputs are ['x'], expected one input 'feats'"),
        ({"output_name": "out"}, "outputs are ['out'], expected 'embs'"),
        ({"dims": (1, 200, 80)}, "fixed dimensions"),
        ({"dims": ("B", "T")}, "not a float tensor"),
        ({"domain": "com.example.custom"}, "custom operators"),
        ({"op": "NoSuchOperator"}, "onnxruntime cannot load the model"),
        (
            {"initializer": _field(8, b"w") + _field(13, _field(1, b"location")) + _field(14, 1)},
            "external files",
        ),
        # data_location EXTERNAL written as 2**32 + 1: parsers keep the low 32 bits of an enum.
        ({"initializer": _field(8, b"w") + _field(14, (1 << 32) + 1)}, "external files"),
        # A field of TensorProto this reader does not know (could hold data for a newer runtime).
        ({"initializer": _field(8, b"w") + _field(17, b"x")}, "TensorProto field 17"),
        # An execution provider's precompiled blob, possibly a file path.
        ({"op": "EPContext", "domain": "com.microsoft"}, "'EPContext', which is never run"),
    ],
)
def test_unsupported_graphs_are_refused(tmp_path, kwargs, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(_model(**kwargs))
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert message in info.value.message
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_truncated_model_is_refused(tmp_path):
    data = MODEL.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_onnx(path)
    assert not is_onnx_model(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 64, np.random.default_rng(3).bytes(4096), b"hello world\n" * 50]
)
def test_not_onnx_is_refused(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        load_onnx(path)


def test_missing_and_directory_are_refused(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="directory"):
        load_onnx(tmp_path)


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as fh:  # sparse: no disk used
        fh.truncate(MAX_ONNX_BYTES + 1)
    with pytest.raises(ModelError, match="limit"):
        load_onnx(path)
