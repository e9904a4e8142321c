"""The embedding engine runs every model family: the same Embedder batches GE2E windows and
whole utterances of NeMo, SpeechBrain and ONNX models, and an embedding does not depend on
what else is in its batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from encoder_driver import embed_files as driver_embed_files

from helpers import ROOT, manifest, require_data
from speakerdb import Embedder
from speakerdb.errors import ModelError

FIXTURES = ROOT / "tests" / "fixtures" / "models"


def _load(family: str):
    if family == "ge2e":
        from speakerdb.model._ge2e import load_ge2e

        return load_ge2e()
    if family == "nemo":
        from speakerdb.model._nemo import load_nemo

        return load_nemo(FIXTURES / "nemo" / "titanet-small.nemo")
    if family == "nemo-ecapa":
        from speakerdb.model._nemo import load_nemo

        return load_nemo(FIXTURES / "nemo" / "ecapa-small.nemo")
    if family == "speechbrain":
        from speakerdb.model._speechbrain import load_speechbrain

        return load_speechbrain(FIXTURES / "speechbrain" / "ecapa-small")
    from speakerdb.model._onnx import load_onnx

    return load_onnx(FIXTURES / "onnx" / "wespeaker-resnet34-small.onnx", threads=1)


FAMILIES = ["ge2e", "nemo", "nemo-ecapa", "speechbrain", "onnx"]


@pytest.fixture(scope="module")
def mixed_files() -> list[Path]:
    """16 recordings of very different lengths (1-35 s), in a shuffled order."""
    require_data()
    files = [p for p, _ in manifest("librispeech")[:6]]
    files += [p for p, _ in manifest("vctk")[:5]]
    files += [p for p, _ in manifest("arabic-commands")[:3]]
    files += [p for p, _ in manifest("telephone")[:2]]
    order = np.random.default_rng(7).permutation(len(files))
    return [files[i] for i in order]


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_alone_equals_embedding_in_a_mixed_batch(family, mixed_files):
    embedder = Embedder.from_encoder(_load(family), device="cpu")
    together = embedder.embed(mixed_files, batch_size=16)
    assert all(r.ok for r in together), [str(r.error) for r in together if not r.ok]
    # Small batches too: the batches then hold other neighbours.
    small = embedder.embed_files(mixed_files[::-1], batch_size=3)[::-1]
    for i, path in enumerate(mixed_files):
        alone = embedder.get_embedding(path)
        assert alone.shape == (embedder.dimension,) and alone.dtype == np.float32
        assert np.linalg.norm(alone) == pytest.approx(1.0, abs=1e-5)
        assert float(alone @ together[i].vector) >= 0.9999, (family, path.name)
        assert float(alone @ small[i]) >= 0.9999, (family, path.name)


@pytest.mark.parametrize("family", ["nemo", "speechbrain"])
def test_cpu_batches_of_whole_recordings_stay_within_the_family_frame_budget(family, mixed_files):
    """Whole-recording families declare ``cpu_batch_frames``: on a CPU no encoder call pads
    more frames than that, except a single chunk longer than the budget (big batches of
    long recordings ran 1.5x slower per frame; benchmarks/embed_throughput.py --model)."""
    encoder = _load(family)
    budget = encoder.cpu_batch_frames
    assert budget is not None
    calls: list[tuple[int, int]] = []
    original = encoder.encode

    def recording(features, lengths):
        calls.append((int(features.shape[0]), int(features.shape[1])))
        return original(features, lengths)

    encoder.encode = recording
    embedder = Embedder.from_encoder(encoder, device="cpu")
    vectors = embedder.embed_files(mixed_files)  # default batch_size: 64 chunks
    assert vectors.shape == (len(mixed_files), embedder.dimension)
    assert sum(rows for rows, _ in calls) == len(mixed_files)  # one chunk per recording
    for rows, frames in calls:
        assert rows == 1 or rows * frames <= budget, (rows, frames, budget)


@pytest.mark.parametrize("family", ["nemo", "speechbrain", "onnx"])
def test_engine_matches_the_family_driver(family, mixed_files):
    """The engine gives what the family's own pipeline gives (decode, resample, front end,
    network, normalise) for recordings that need no trimming decisions of their own."""
    encoder = _load(family)
    embedder = Embedder.from_encoder(encoder, device="cpu")
    files = mixed_files[:6]
    ours = embedder.embed_files(files, batch_size=8)
    theirs = driver_embed_files(encoder, files)
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999


def test_identity_from_encoder_and_common_quality_fields(mixed_files):
    """Every family reports the same speech seconds (common VAD) and its identity."""
    ge2e = Embedder.from_encoder(_load("ge2e"), device="cpu")
    onnx_encoder = _load("onnx")
    onnx = Embedder.from_encoder(onnx_encoder, device="cpu", name="wespeaker")
    assert onnx.identity.name == "wespeaker"
    assert onnx.identity.weights_sha256 == onnx_encoder.weights_sha256
    assert onnx.identity.dimension == onnx_encoder.dimension == onnx.dimension
    assert ge2e.identity.name == "ge2e" and ge2e.dimension == 256
    a = ge2e.embed(mixed_files[:4])
    b = onnx.embed(mixed_files[:4])
    for x, y in zip(a, b, strict=True):
        assert x.speech_seconds == y.speech_seconds and x.duration == y.duration
        assert x.bandwidth_hz == pytest.approx(y.bandwidth_hz, abs=80.0)


def test_load_model_is_the_ge2e_family(model):
    from speakerdb.model._ge2e import GE2ESpeakerEncoder

    assert isinstance(model.encoder, GE2ESpeakerEncoder)
    assert model.encoder.weights_sha256 == model.identity.weights_sha256


def test_encoder_dimension_must_match_identity(model):
    from speakerdb._identity import ModelIdentity

    wrong = ModelIdentity("ge2e", model.identity.weights_sha256, 128, 0.8)
    with pytest.raises(ModelError, match="128"):
        Embedder(model.encoder, wrong, model.device)
