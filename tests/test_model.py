"""The GE2E Embedder: faithful to the reference, batch-invariant, and as accurate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import speakerdb
from helpers import manifest, require_data, trials
from speakerdb import scoring
from speakerdb.errors import ConfigurationError, ModelError, NoSpeechError, UsageError
from speakerdb.model import _utterance as utterance_module
from speakerdb.model._ge2e import GE2EEncoder
from speakerdb.model._weights import ge2e_weights_path, weights_sha256

# Reference figures from ../shared/data/README.md (Resemblyzer 0.1.4, cosine scoring).
REFERENCE = {
    "librispeech": {"eer": 0.0042, "min_dcf": 0.013},
    "vctk": {"eer": 0.0, "min_dcf": 0.0},
    "arabic-commands": {"eer": 0.1412, "min_dcf": 0.945},
}


@pytest.fixture(scope="module")
def librispeech_files():
    files = [p for p, _ in manifest("librispeech")]
    files += [p for p, _ in manifest("librispeech", "singles.jsonl")]
    return files


def test_embedding_contract(model):
    path = require_data() / "vctk" / "p225" / "p225_003.wav"
    vector = model.get_embedding(path)
    assert vector.shape == (256,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(vector, model.get_embedding(str(path)))
    assert model.identity.name == "ge2e" and model.identity.dimension == 256
    assert model.identity.weights_sha256 == weights_sha256(ge2e_weights_path())
    assert -1 <= model.default_threshold <= 1


def test_parity_with_reference_pipeline(model, librispeech_files):
    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    theirs = np.stack([reference.embed_utterance(preprocess_wav(f)) for f in librispeech_files])
    ours = model.embed_files(librispeech_files)
    cosines = np.sum(theirs * ours, axis=1)
    print(f"parity on {len(cosines)} files: mean {cosines.mean():.6f} min {cosines.min():.6f}")
    assert cosines.mean() >= 0.995
    assert cosines.min() >= 0.98


def test_batch_invariance(model, librispeech_files):
    target = librispeech_files[7]
    alone = model.get_embedding(target)
    others = librispeech_files[20:36]
    for position in (0, 8, 16):
        batch = [*others[:position], target, *others[position:]]
        vectors = model.embed_files(batch, batch_size=48)
        assert float(vectors[position] @ alone) >= 0.9999
    # Tiny batches too: windows of one file split across several encoder calls.
    assert float(model.embed_files([target], batch_size=3)[0] @ alone) >= 0.9999


@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_eer_no_worse_than_reference(model, dataset):
    rows = trials(dataset)
    files = sorted({p for _, a, b in rows for p in (a, b)})
    vectors = dict(zip(files, model.embed_files(files), strict=True))
    scores = np.array([scoring.cosine(vectors[a], vectors[b]) for _, a, b in rows])
    labels = np.array([label for label, _, _ in rows])
    eer, threshold = scoring.eer(scores[labels == 1], scores[labels == 0])
    dcf, _ = scoring.min_dcf(scores[labels == 1], scores[labels == 0], p_target=0.01)
    print(f"{dataset}: {len(rows)} trials, EER {eer:.4%} at {threshold:.3f}, minDCF {dcf:.3f}")
    assert eer <= REFERENCE[dataset]["eer"] + 1e-4
    assert dcf <= REFERENCE[dataset]["min_dcf"] + 1e-3


def test_seed_api_embeds_each_distinct_file_once(model, monkeypatch):
    speakers = {}
    for path, label in manifest("vctk"):
        speakers.setdefault(label, []).append(path)
    a1, a2 = speakers["p225"][:2]
    b1 = speakers["p226"][0]
    calls = []
    real = utterance_module.prepare_utterance

    def counting(source, *args, **kwargs):
        calls.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr("speakerdb.model._embedder.prepare_utterance", counting)
    decisions = model.verify_speakers_batch([(a1, a2), (a1, b1), (a2, b1), (a1, a2)])
    assert decisions.dtype == np.bool_
    assert decisions.tolist() == [True, False, False, True]
    assert sorted(calls) == sorted(map(str, [a1, a2, b1]))
    assert model.verify_speakers(a1, a2) is True
    assert model.verify_speakers(a1, b1) is False
    # A threshold above any score rejects everything; below any accepts everything.
    assert model.verify_speakers(a1, a2, threshold=1.0) is False
    assert model.verify_speakers(a1, b1, threshold=-1.0) is True
    result = model.compare(a1, b1)  # the one rule: the bundled calibration's LLR
    assert result.same_speaker is False and result.threshold == pytest.approx(math.log(99))
    assert result.model == model.identity.label and result.llr == result.score
    assert result.cosine == pytest.approx(
        scoring.cosine(model.get_embedding(a1), model.get_embedding(b1))
    )
    with pytest.raises(UsageError):
        model.compare(a1, b1, threshold=float("nan"))
    with pytest.raises(UsageError):
        model.verify_speakers(a1, b1, threshold=2.0)  # NeMo's threshold is a cosine


def test_embed_reports_errors_per_file(model, tmp_path):
    good = require_data() / "vctk" / "p225" / "p225_003.wav"
    silent = tmp_path / "silence.wav"
    import soundfile as sf

    sf.write(silent, np.zeros(16000, np.float32), 16000)
    results = model.embed([good, silent, good])
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, NoSpeechError)
    assert results[0].sha256 == results[2].sha256 and results[0].speech_seconds > 1
    with pytest.raises(NoSpeechError):
        model.embed_files([good, silent])


def test_explicit_devices(model):
    assert speakerdb.load_model(device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            speakerdb.load_model(device="cuda:1")
    with pytest.raises(ConfigurationError):
        speakerdb.load_model(device="not-a-device")


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model"):
        speakerdb.load_model("xvector-9000")


def test_checkpoint_keys_are_checked_strictly(tmp_path):
    state = torch.load(ge2e_weights_path(), map_location="cpu", weights_only=True)["model_state"]
    missing = {k: v for k, v in state.items() if k != "linear.bias"}
    torch.save({"model_state": missing}, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="does not match"):
        GE2EEncoder.from_checkpoint(tmp_path / "missing.pt")
    extra = dict(state, **{"projection.weight": torch.zeros(3)})
    torch.save({"model_state": extra}, tmp_path / "extra.pt")
    with pytest.raises(ModelError, match="does not match"):
        GE2EEncoder.from_checkpoint(tmp_path / "extra.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        GE2EEncoder.from_checkpoint(tmp_path / "garbage.pt")
    # The two GE2E loss parameters are the only keys allowed to be left out.
    assert isinstance(GE2EEncoder.from_checkpoint(ge2e_weights_path()), GE2EEncoder)


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
def test_parity_at_other_sample_rates(model, librispeech_files, tmp_path, rate):
    """Recordings at other rates: the reference resamples with librosa (soxr), we with
    torchaudio; the voiceprints must still agree."""
    import soundfile as sf
    import soxr
    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    files = []
    for source in librispeech_files[50:62]:
        samples, original = sf.read(source, dtype="float32")
        path = tmp_path / f"{source.stem}-{rate}.wav"
        sf.write(path, soxr.resample(samples, original, rate), rate, subtype="FLOAT")
        files.append(path)
    theirs = np.stack([reference.embed_utterance(preprocess_wav(f)) for f in files])
    cosines = np.sum(theirs * model.embed_files(files), axis=1)
    print(f"parity at {rate} Hz: mean {cosines.mean():.6f} min {cosines.min():.6f}")
    assert cosines.mean() >= 0.995
    assert cosines.min() >= 0.98
