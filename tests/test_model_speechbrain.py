"""The "speechbrain" model family: an spkrec-ecapa-style folder loaded without SpeechBrain,
checked against SpeechBrain's own embeddings (EncoderClassifier.load_audio + encode_batch),
and refused when hostile or configured beyond what is implemented."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from child import run_child
from encoder_driver import embed_files, embed_prepared, prepare_file
from family_parity import Reference, assert_discriminative, assert_parity, input_paths

from helpers import ROOT, require_data
from speakerdb.errors import ModelError
from speakerdb.model._hyperyaml import MAX_EXPANDED, Resolver, Tagged, load_hyperyaml, resolve
from speakerdb.model._speechbrain import (
    MAX_CKPT_BYTES,
    is_speechbrain_folder,
    load_speechbrain,
    parse_hyperparams,
)

FIXTURES = ROOT / "tests" / "fixtures" / "models" / "speechbrain"
MODEL = FIXTURES / "ecapa-small"
REFERENCE = FIXTURES / "reference-small.npz"


@pytest.fixture(scope="module")
def encoder():
    return load_speechbrain(MODEL)


@pytest.fixture(scope="module")
def reference():
    return Reference(REFERENCE)


def test_fixture_loads_with_speechbrain_defaults(encoder):
    assert encoder.family == "speechbrain"
    assert encoder.dimension == 192
    assert encoder.sample_rate == 16_000
    assert encoder.default_threshold == 0.25
    assert "0.25" in encoder.threshold_note
    assert encoder.exact_padding is True
    assert len(encoder.weights_sha256) == 64
    assert load_speechbrain(MODEL).weights_sha256 == encoder.weights_sha256


def test_recognised_by_content(tmp_path):
    assert is_speechbrain_folder(MODEL)
    assert not is_speechbrain_folder(tmp_path)
    assert not is_speechbrain_folder(MODEL / "hyperparams.yaml")
    assert not is_speechbrain_folder(tmp_path / "missing")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "hyperparams.yaml").write_text("n_mels: 80\n")
    (fake / "embedding_model.ckpt").write_bytes(b"")
    assert not is_speechbrain_folder(fake)


def test_reference_model_is_discriminative(reference):
    assert_discriminative(reference)


def test_parity_with_speechbrain(encoder, reference):
    """A sixth of the original recordings (every set) and a thirtieth of the 8 kHz, 48 kHz
    and MP3 versions; the slow test below takes every input."""
    data = require_data()
    assert_parity(encoder, reference, data, {"orig": 6, "8k": 30, "48k": 30, "mp3": 30}, "sb")


@pytest.mark.slow
@pytest.mark.full_parity
def test_parity_with_speechbrain_every_input(encoder, reference):
    """All 1890 inputs (about 10 000 s of audio; a few minutes on 2 cores)."""
    data = require_data()
    assert_parity(encoder, reference, data, {"orig": 1, "8k": 1, "48k": 1, "mp3": 1}, "sb")


def test_parity_with_embedding_normalisation(reference):
    """embedding_norm=True applies mean_var_norm_emb, like encode_batch(normalize=True)."""
    data = require_data()
    normed = Reference(REFERENCE, "embeddings_normalized")
    encoder = load_speechbrain(MODEL, embedding_norm=True)
    assert encoder.weights_sha256 != load_speechbrain(MODEL).weights_sha256
    assert_parity(encoder, normed, data, {"orig": 30, "48k": 60}, "sb-norm")


def test_batch_invariance(encoder, reference):
    """A file alone and inside a padded batch of 16 recordings of other lengths."""
    data = require_data()
    items = [i for i in reference.items("orig") if i.set in ("librispeech", "vctk")][::9][:16]
    prepared = [prepare_file(encoder, p) for p in input_paths(reference, items, data)]
    lengths = {c[0].shape[0] for c in prepared}
    assert len(lengths) > 8, "the batch should mix lengths"
    alone = embed_prepared(encoder, prepared, batch_size=1)
    together = embed_prepared(encoder, prepared, batch_size=16)
    cos = (alone * together).sum(axis=1)
    assert cos.min() >= 0.9999, cos


def test_too_short_input_is_refused(encoder):
    from speakerdb.errors import TooLittleSpeechError

    with pytest.raises(TooLittleSpeechError):
        encoder.prepare(np.zeros(320, np.float32))


# --- hostile and malformed folders ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """A writable copy of the fixture model."""
    target = tmp_path / "model"
    shutil.copytree(MODEL, target)
    return target


def _edit_yaml(folder: Path, old: str, new: str) -> None:
    path = folder / "hyperparams.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_python_object_tag_is_refused(folder, tmp_path):
    marker = tmp_path / "pwned"
    _edit_yaml(
        folder,
        "n_mels: 80",
        f"n_mels: 80\nboom: !!python/object/apply:os.system ['touch {marker}']",
    )
    with pytest.raises(ModelError, match=r"refused YAML tag .*python/object"):
        load_speechbrain(folder)
    assert not marker.exists()


def test_apply_tag_is_never_called(folder, tmp_path):
    """!apply: runs a function in HyperPyYAML; here it stays inert data, and a value that
    depends on it is refused."""
    marker = tmp_path / "pwned"
    _edit_yaml(folder, "n_mels: 80", f"seed: !apply:os.system ['touch {marker}']\nn_mels: 80")
    load_speechbrain(folder)  # an unused !apply is ignored, never executed
    assert not marker.exists()
    _edit_yaml(folder, "    n_mels: !ref <n_mels>", "    n_mels: !ref <seed>")
    with pytest.raises(ModelError, match=r"compute_features\.n_mels"):
        load_speechbrain(folder)
    assert not marker.exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SPEAKERDB_TEST_MARKER']}",))


def test_checkpoint_with_code_is_refused(folder, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SPEAKERDB_TEST_MARKER", str(marker))
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    state["blocks.0.conv.conv.weight"] = _RunsCode()
    torch.save(state, folder / "embedding_model.ckpt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ModelError, match="not a plain tensor checkpoint"):
        load_speechbrain(folder)
    torch.save(state, folder / "embedding_model.ckpt")  # torch's own protocol: the code is met
    with pytest.raises(ModelError, match=r"Python objects \(posix.system\)"):
        load_speechbrain(folder)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(folder):
    data = (folder / "embedding_model.ckpt").read_bytes()
    (folder / "embedding_model.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_speechbrain(folder)


def test_oversized_checkpoint_is_refused_before_reading(folder):
    with open(folder / "embedding_model.ckpt", "r+b") as fh:  # sparse: no disk used
        fh.truncate(MAX_CKPT_BYTES + 1)
    with pytest.raises(ModelError, match="limit"):
        load_speechbrain(folder)


@pytest.mark.parametrize("name", ["embedding_model.ckpt", "hyperparams.yaml"])
def test_missing_file_is_named(folder, name):
    (folder / name).unlink()
    with pytest.raises(ModelError, match=f"missing {name}"):
        load_speechbrain(folder)


def test_not_a_folder(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        load_speechbrain(MODEL / "hyperparams.yaml")
    with pytest.raises(ModelError):
        load_speechbrain(tmp_path / "nothing")


def test_checkpoint_not_matching_the_configuration(folder):
    _edit_yaml(folder, "lin_neurons: 192", "lin_neurons: 256")
    with pytest.raises(ModelError, match=r"fc\.conv\.weight has shape"):
        load_speechbrain(folder)


def test_checkpoint_with_an_unexpected_tensor(folder):
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, folder / "embedding_model.ckpt")
    with pytest.raises(ModelError, match=r"unexpected tensor extra\.weight"):
        load_speechbrain(folder)


def test_non_finite_weights_are_refused(folder):
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    state["fc.conv.bias"][0] = float("nan")
    torch.save(state, folder / "embedding_model.ckpt")
    with pytest.raises(ModelError, match="not finite"):
        load_speechbrain(folder)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("    n_mels: !ref <n_mels>\n", "    n_mels: 64\n", "embedding_model.input_size"),
        ("    n_mels: !ref <n_mels>\n", "    n_mels: 80\n    deltas: True\n", "deltas = True"),
        (
            "    n_mels: !ref <n_mels>\n",
            "    n_mels: 80\n    filter_shape: gaussian\n",
            "filter_shape = 'gaussian'",
        ),
        (
            "    n_mels: !ref <n_mels>\n",
            "    n_mels: 80\n    sample_rate: 8000\n",
            "sample_rate = 8000",
        ),
        ("    n_mels: !ref <n_mels>\n", "    n_mels: 80\n    mystery: 1\n", "mystery = 1"),
        ("norm_type: sentence", "norm_type: global", "mean_var_norm.norm_type = 'global'"),
        (
            "    lin_neurons: 192\n",
            "    lin_neurons: 192\n    activation: !name:torch.nn.LeakyReLU\n",
            "activation = !name:torch.nn.LeakyReLU",
        ),
        ("kernel_sizes: [5, 3, 3, 3, 1]", "kernel_sizes: [4, 3, 3, 3, 1]", "even kernel"),
        (
            "!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
            "!new:speechbrain.lobes.models.Xvector.Xvector",
            "embedding_model is !new:speechbrain.lobes.models.Xvector.Xvector",
        ),
        (
            "!new:speechbrain.lobes.features.Fbank",
            "!new:speechbrain.lobes.features.MFCC",
            "compute_features is !new:speechbrain.lobes.features.MFCC",
        ),
    ],
)
def test_unsupported_configuration_is_refused(folder, old, new, field):
    _edit_yaml(folder, old, new)
    with pytest.raises(ModelError) as info:
        load_speechbrain(folder)
    assert field in info.value.message
    assert "\n" not in info.value.message


def test_yaml_alias_is_refused():
    with pytest.raises(ModelError, match="alias"):
        load_hyperyaml(b"a: &x [1, 2]\nb: *x\n", "h.yaml")


def test_malformed_yaml_is_refused():
    with pytest.raises(ModelError, match="malformed YAML"):
        load_hyperyaml(b"a: [1, 2\n", "h.yaml")
    with pytest.raises(ModelError, match="top level"):
        load_hyperyaml(b"- 1\n- 2\n", "h.yaml")
    with pytest.raises(ModelError, match="UTF-8"):
        load_hyperyaml(b"a: \xff\xfe\n", "h.yaml")
    with pytest.raises(ModelError, match="limit"):
        load_hyperyaml(b"#" * (2 << 20), "h.yaml")


def test_references_resolve_without_evaluating_code():
    root = load_hyperyaml(
        b"n: 80\nhalf: !ref <n> // 2\npath: !ref <base>/x.ckpt\nbase: /m\n"
        b"nested: {a: {b: 3}}\npick: !ref <nested[a][b]>\n"
        b"loop: !ref <loop>\nbad: !ref __import__('os')\n"
        b"thing: !new:some.Class {k: !ref <n>}\n",
        "h.yaml",
    )
    assert resolve(root["half"], root, "half") == 40
    assert resolve(root["path"], root, "path") == "/m/x.ckpt"
    assert resolve(root["pick"], root, "pick") == 3
    assert resolve(root["thing"], root, "thing") == Tagged("new", "some.Class", {"k": 80})
    with pytest.raises(ModelError, match=r"cycle: <loop> -> <loop>"):
        resolve(root["loop"], root, "loop")
    with pytest.raises(ModelError):
        resolve(root["bad"], root, "bad")


# --- references fanning out (issue 16, defect 8) -----------------------------------------------


def _fan_out(kind: str, levels: int = 12, fan: int = 10) -> tuple[str, str]:
    """YAML lines defining x0 .. x{levels}, each naming the one before ``fan`` times, and
    the field of the fixture's hyperparams.yaml that is pointed at the last."""
    if kind == "list":
        lines = ["x0: [1]"] + [
            f"x{i}: [{', '.join([f'!ref <x{i - 1}>'] * fan)}]" for i in range(1, levels + 1)
        ]
        return "\n".join(lines), f"    channels: !ref <x{levels}>"
    if kind == "string":
        lines = ["x0: abcdefgh"] + [
            f"x{i}: !ref {f'<x{i - 1}>' * fan}" for i in range(1, levels + 1)
        ]
        return "\n".join(lines), f"    norm_type: !ref <x{levels}>"
    lines = ["x0: 10"] + [
        f"x{i}: !ref {' * '.join([f'<x{i - 1}>'] * fan)}" for i in range(1, levels + 1)
    ]
    return "\n".join(lines), f"    lin_neurons: !ref <x{levels}>"


_FIELD_REPLACED = {
    "list": "    channels: [128, 128, 128, 128, 384]",
    "string": "    norm_type: sentence",
    "arithmetic": "    lin_neurons: 192",
}


def _bomb_folder(folder: Path, kind: str) -> Path:
    lines, field = _fan_out(kind)
    _edit_yaml(folder, _FIELD_REPLACED[kind], field)
    path = folder / "hyperparams.yaml"
    path.write_text(path.read_text() + "\n" + lines + "\n")
    return path


def test_fanning_references_are_refused_quickly(tmp_path):
    """A 2.7 KB hyperparams.yaml with ten references per level hung `models show`: each
    entry is now resolved once and expansion is bounded. The child is killed after 120 s
    (a hang guard; memoised, each file takes milliseconds)."""
    folders = {}
    for kind in _FIELD_REPLACED:
        folders[kind] = tmp_path / kind
        shutil.copytree(MODEL, folders[kind])
        size = _bomb_folder(folders[kind], kind).stat().st_size
        assert size < 4096, size
    result = run_child(
        """
        import json, sys
        from click.testing import CliRunner
        from speakerdb.cli import cli
        from speakerdb.errors import ModelError
        from speakerdb.model._speechbrain import parse_hyperparams
        RESULT = {}
        for folder in sys.argv[1:]:
            with open(folder + "/hyperparams.yaml", "rb") as fh:
                data = fh.read()
            try:
                parse_hyperparams(data)
                RESULT[folder] = "loaded"
            except ModelError as exc:
                RESULT[folder] = exc.message
        shown = CliRunner().invoke(cli, ["models", "show", sys.argv[1]])
        RESULT["cli"] = [shown.exit_code, shown.stderr]
        """,
        *map(str, folders.values()),
        timeout=120,
        address_space_gb=10,
    )
    for kind, folder in folders.items():
        message = result[str(folder)]
        expected = "over 64 bits" if kind == "arithmetic" else f"over {MAX_EXPANDED} values"
        assert expected in message, (kind, message)
    code, stderr = result["cli"]
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert f"over {MAX_EXPANDED} values" in stderr


def test_fanning_references_within_bounds_resolve_exactly():
    """Memoised entries give what resolving each reference afresh gives."""
    lines, _ = _fan_out("list", levels=3, fan=4)
    text, _ = _fan_out("string", levels=3, fan=3)
    numbers, _ = _fan_out("arithmetic", levels=2, fan=3)
    root = load_hyperyaml(
        (lines + "\n" + text.replace("x", "s") + "\n" + numbers.replace("x", "n")).encode(),
        "h.yaml",
    )
    refs = Resolver(root)
    expected: list = [1]
    for _ in range(3):
        expected = [expected] * 4
    assert refs.resolve(root["x3"], "x3") == expected
    assert refs.resolve(root["s3"], "s3") == "abcdefgh" * 27
    assert refs.resolve(root["n2"], "n2") == 10**9


def test_card_hyperparams_parse():
    config = parse_hyperparams((MODEL / "hyperparams.yaml").read_bytes())
    assert config.fbank.n_mels == 80
    assert config.features_norm.norm_type == "sentence"
    assert config.features_norm.std_norm is False
    assert config.ecapa.channels == (128, 128, 128, 128, 384)
    assert config.embedding_norm is not None


def test_embeddings_differ_between_speakers(encoder, reference):
    data = require_data()
    items = reference.items("orig", 1)
    vctk = [i for i in items if i.set == "vctk"][::5]
    emb = embed_files(encoder, input_paths(reference, vctk, data))
    assert float((emb @ emb.T)[~np.eye(len(vctk), dtype=bool)].mean()) < 0.9
