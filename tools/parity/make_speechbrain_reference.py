"""Reference embeddings from SpeechBrain itself, for the "speechbrain" family's parity tests.

Run in the reference environment (tools/parity/setup_speechbrain_wespeaker_env.sh), from the
repository root:

    /work/refenv/sbws/bin/python tools/parity/make_speechbrain_reference.py --size small \
        --out tests/fixtures/models/speechbrain
    /work/refenv/sbws/bin/python tools/parity/make_speechbrain_reference.py --size full \
        --out /tmp/sb-full           # C=1024 model card size; for the benchmark, not committed

What it does:
1. writes a folder laid out like speechbrain/spkrec-ecapa-voxceleb: the model card's
   hyperparams.yaml (ECAPA-TDNN, Fbank n_mels 80, sentence mean normalisation,
   mean_var_norm_emb, classifier, label encoder, Pretrainer) with ``pretrained_path`` pointed
   at the folder itself, and ``--size small`` shrinking the network (C=128) for a fixture of
   about 1 MB;
2. builds the modules with SpeechBrain's own classes and random weights (seeded), randomises
   every BatchNorm's weight and bias, and estimates the BatchNorm running statistics on real
   speech (default initialisation makes BatchNorm the identity and every file's embedding
   nearly the same); saves the checkpoints as SpeechBrain saves them (torch.save of state
   dicts, InputNormalization's own _save, CategoricalEncoder.save);
3. loads the folder with ``EncoderClassifier.from_hparams(source=<folder>, savedir=...)`` and
   embeds every parity input one file at a time, as users do: ``load_audio`` (soundfile +
   torchaudio resampling) then ``encode_batch`` (normalize=False, as verification does, and
   normalize=True);
4. checks and prints that different files give clearly different embeddings;
5. writes ``reference.npz`` (keys, embeddings as float16) and ``reference.json`` (framework
   versions, derived-audio sha256s, discrimination figures, timing).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import parity_audio  # noqa: E402

SIZES = {
    # The model card's ECAPA (spkrec-ecapa-voxceleb) and a small variant for the fixture.
    "full": {
        "channels": [1024, 1024, 1024, 1024, 3072],
        "attention": 128,
        "lin": 192,
        "se": 128,
        "speakers": 7205,
    },
    "small": {
        "channels": [128, 128, 128, 128, 384],
        "attention": 64,
        "lin": 192,
        "se": 64,
        "speakers": 16,
    },
}

HYPERPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: {pretrained_path}

# Output parameters
out_n_neurons: {speakers}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {attention}
    se_channels: {se}
    lin_neurons: {lin}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder


pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def calibration_files(data: Path, count: int) -> list[Path]:
    """Real speech for BatchNorm statistics: the first files of librispeech and vctk."""
    rows = parity_audio.recordings(data)
    picked = [r for r in rows if r[0] == "librispeech"][: count // 2]
    picked += [r for r in rows if r[0] == "vctk"][: count - len(picked)]
    return [data / s / rel for s, rel in picked]


def build_folder(folder: Path, size: str, data: Path, seed: int) -> None:
    import speechbrain.lobes.models.ECAPA_TDNN as ecapa
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.dataio import audio_io
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.dataio.preprocess import AudioNormalizer

    spec = SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    text = HYPERPARAMS.format(
        pretrained_path=folder.resolve(),
        speakers=spec["speakers"],
        channels=spec["channels"],
        attention=spec["attention"],
        se=spec["se"],
        lin=spec["lin"],
    )
    (folder / "hyperparams.yaml").write_text(text)
    # The modules exactly as the card's YAML builds them (no checkpoint loading here).
    with open(folder / "hyperparams.yaml") as fh:
        hp = load_hyperpyyaml(fh)
    torch.manual_seed(seed)
    model: ecapa.ECAPA_TDNN = hp["embedding_model"]
    for p in model.parameters():  # re-draw every weight from the seed
        if p.dim() > 1:
            torch.nn.init.kaiming_uniform_(p, a=5**0.5)
        else:
            torch.nn.init.uniform_(p, -0.1, 0.1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    # Running statistics from real speech: one batch of 2-second excerpts (asp_bn needs a
    # batch: it sees one value per utterance), through the card's front end.
    normalizer = AudioNormalizer()
    excerpts = []
    for path in calibration_files(data, 40):
        signal, rate = audio_io.load(str(path), channels_first=False)
        wav = normalizer(signal, rate)
        if wav.shape[0] >= 32_000:
            excerpts.append(wav[:32_000])
    batch = torch.stack(excerpts[:24])
    model.train()
    with torch.no_grad():
        feats = hp["mean_var_norm"](hp["compute_features"](batch), torch.ones(len(batch)))
        model(feats, torch.ones(len(batch)))
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = 0.1
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")

    classifier = hp["classifier"]
    torch.save(classifier.state_dict(), folder / "classifier.ckpt")
    norm = hp["mean_var_norm_emb"]
    norm.glob_mean = torch.randn(spec["lin"]) * 0.5
    norm.glob_std = torch.ones(spec["lin"])
    norm.count = 1000
    norm._save(folder / "mean_var_norm_emb.ckpt")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"spk{i:05d}" for i in range(spec["speakers"])])
    encoder.save(folder / "label_encoder.txt")


def versions() -> dict[str, str]:
    names = ("speechbrain", "hyperpyyaml", "torch", "torchaudio", "soundfile", "soxr", "numpy")
    return {n: md.version(n) for n in names}


def discrimination(emb: np.ndarray, labels: list[str]) -> dict[str, float]:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit.T
    same = np.equal.outer(labels, labels)
    off = ~np.eye(len(labels), dtype=bool)
    return {
        "mean_cosine_same_speaker": float(cos[same & off].mean()),
        "mean_cosine_different_speaker": float(cos[~same].mean()),
        "max_cosine_different_files": float(cos[off].max()),
        "min_cosine_different_files": float(cos[off].min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=parity_audio.default_data(ROOT))
    parser.add_argument("--variants", default=",".join(parity_audio.VARIANTS))
    parser.add_argument("--limit", type=int, default=0, help="first N inputs per variant")
    parser.add_argument("--every", type=int, default=1, help="every N-th input of each variant")
    parser.add_argument("--seed", type=int, default=20251124)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--skip-normalized", action="store_true", help="skip encode_batch(normalize=True)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data.resolve()
    folder = args.out / f"ecapa-{args.size}"
    if folder.exists():
        shutil.rmtree(folder)
    build_folder(folder, args.size, data, args.seed)

    from speechbrain.inference.speaker import EncoderClassifier

    with tempfile.TemporaryDirectory() as savedir:
        classifier = EncoderClassifier.from_hparams(source=str(folder.resolve()), savedir=savedir)
        variants = tuple(args.variants.split(","))
        todo = parity_audio.items(data, variants)
        todo = parity_audio.subset(todo, args.limit, args.every)
        keys, plain, normed, shas = [], [], [], {}
        seconds = 0.0
        elapsed = 0.0
        for item in todo:
            path = parity_audio.path_of(item, data)
            if item.variant != "orig":
                shas[item.key] = parity_audio.sha256_file(path)
            start = time.perf_counter()
            with torch.no_grad():
                wav = classifier.load_audio(str(path))
                emb = classifier.encode_batch(wav[None])
            elapsed += time.perf_counter() - start
            emb_n = emb
            if not args.skip_normalized:
                with torch.no_grad():
                    emb_n = classifier.encode_batch(wav[None], normalize=True)
            seconds += wav.shape[0] / 16_000
            keys.append(item.key)
            plain.append(emb[0, 0].numpy())
            normed.append(emb_n[0, 0].numpy())
    plain_a, normed_a = np.stack(plain), np.stack(normed)
    orig = [i for i, k in enumerate(keys) if k.endswith("|orig")]
    labels = [keys[i].split("/")[0] + ":" + keys[i].split("/")[-2] for i in orig]
    disc = discrimination(plain_a[orig], labels)
    print("discrimination (orig inputs):", json.dumps(disc, indent=1))
    if disc["mean_cosine_different_speaker"] > 0.9:
        raise SystemExit("random model is not discriminative: BatchNorm randomisation failed?")

    (folder / "hyperparams.yaml").write_text(
        (folder / "hyperparams.yaml")
        .read_text()
        .replace(f"pretrained_path: {folder.resolve()}", "pretrained_path: .")
    )
    np.savez(
        args.out / f"reference-{args.size}.npz",
        keys=np.array(keys),
        embeddings=plain_a.astype(np.float16 if args.size == "small" else np.float32),
        embeddings_normalized=normed_a.astype(np.float16 if args.size == "small" else np.float32),
    )
    meta = {
        "model": folder.name,
        "generator": "tools/parity/make_speechbrain_reference.py",
        "reference_call": "EncoderClassifier.load_audio + encode_batch (one file at a time)",
        "versions": versions(),
        "seed": args.seed,
        "inputs": len(keys),
        "audio_seconds": seconds,
        "original_seconds": elapsed,
        "original_rtf": seconds / elapsed if elapsed else None,
        "discrimination": disc,
        "derived_sha256": shas,
        "note": "pretrained_path pointed at the folder while SpeechBrain loaded it, then "
        "rewritten to '.' so the fixture holds no local path",
    }
    (args.out / f"reference-{args.size}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"{len(keys)} embeddings, {seconds:.0f} s of audio, SpeechBrain load_audio+encode_batch "
        f"{seconds / elapsed:.1f}x real time"
    )


if __name__ == "__main__":
    main()
