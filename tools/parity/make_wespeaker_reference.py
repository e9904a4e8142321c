"""Reference embeddings from WeSpeaker itself, for the "onnx" family's parity tests.

Run in the reference environment (tools/parity/setup_speechbrain_wespeaker_env.sh), from the
repository root:

    /work/refenv/sbws/bin/python tools/parity/make_wespeaker_reference.py --size small \
        --out tests/fixtures/models/onnx
    /work/refenv/sbws/bin/python tools/parity/make_wespeaker_reference.py --size full \
        --out /tmp/ws-full          # ResNet34 as WeSpeaker trains it; benchmark, not committed

What it does:
1. builds WeSpeaker's ResNet34 (``wespeaker.models.resnet``; ``--size small`` uses
   m_channels=8 and a 128-dimensional embedding, registered as ``ResNet34_small`` so that
   WeSpeaker's own loader can build it from config.yaml) with seeded random weights,
   randomises every BatchNorm's weight and bias and estimates its running statistics on real
   speech; writes a WeSpeaker model directory (config.yaml + avg_model.pt);
2. loads it with WeSpeaker's ``Speaker(model_dir)`` (its CLI class) and exports it to ONNX
   exactly as ``wespeaker/bin/export_onnx.py`` does (its wrapper subtracting ``--mean_vec``,
   here the mean embedding of 30 recordings, without which a random ResNet gives every file
   nearly the same direction; ``torch.onnx.export`` with opset 14, input ``feats``, output
   ``embs``, dynamic B and T axes, constant folding; ``dynamo=False``: the TorchScript
   exporter the script was written for, torch 2.9's default being the dynamo exporter);
3. for every parity input, one file at a time: reads it with ``torchaudio.load`` (as
   WeSpeaker does; torchcodec under torchaudio 2.9), puts it on the 16-bit scale (x 32768, as
   WeSpeaker's training pipeline and bin/infer_onnx.py do), and computes
   * ONNX: ``torchaudio.transforms.Resample`` to 16 kHz (``extract_embedding_from_pcm``'s
     call), WeSpeaker's ``Speaker.compute_features`` (fbank + CMN) and the exported graph in
     onnxruntime -- the reference the fixture keeps;
   * torch: WeSpeaker's ``Speaker.extract_embedding_from_pcm`` on its torch model, to check
     that the export and the torch model agree;
   * unscaled: WeSpeaker's ``Speaker.extract_embedding(path)`` as it runs under torchaudio 2.9
     (which ignores normalize=False and gives floats in [-1, 1]), to report what the scale
     changes;
4. checks that different files give clearly different embeddings, writes reference-*.npz
   (keys, ONNX-reference embeddings; float16 for the small model) and reference-*.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wespeaker  # noqa: E402
import parity_audio  # noqa: E402

SIZES = {
    "full": {"model": "ResNet34", "m_channels": 32, "embed_dim": 256},
    "small": {"model": "ResNet34_small", "m_channels": 8, "embed_dim": 128},
}


def register_small() -> None:
    """WeSpeaker's ResNet34 topology with 8 base channels, reachable by config name."""
    resnet = _wespeaker.resnet

    def resnet34_small(
        feat_dim: int, embed_dim: int, pooling_func: str = "TSTP", two_emb_layer: bool = False
    ) -> torch.nn.Module:
        return resnet.ResNet(
            resnet.BasicBlock,
            [3, 4, 6, 3],
            m_channels=8,
            feat_dim=feat_dim,
            embed_dim=embed_dim,
            pooling_func=pooling_func,
            two_emb_layer=two_emb_layer,
        )

    resnet.ResNet34_small = resnet34_small


def config_yaml(size: str) -> str:
    spec = SIZES[size]
    return (
        f"model: {spec['model']}\n"
        "model_args:\n"
        "  feat_dim: 80\n"
        f"  embed_dim: {spec['embed_dim']}\n"
        "  pooling_func: TSTP\n"
        "  two_emb_layer: false\n"
        "dataset_args:\n"
        "  resample_rate: 16000\n"
        "  fbank_args:\n"
        "    num_mel_bins: 80\n"
        "    frame_shift: 10\n"
        "    frame_length: 25\n"
        "    dither: 1.0\n"
    )


def load_pcm(path: Path) -> tuple[torch.Tensor, int]:
    import torchaudio

    pcm, rate = torchaudio.load(str(path))
    return pcm, rate


def to_16k(pcm: torch.Tensor, rate: int) -> torch.Tensor:
    import torchaudio

    if rate == 16_000:
        return pcm
    return torchaudio.transforms.Resample(orig_freq=rate, new_freq=16_000)(pcm)


def build_model_dir(folder: Path, size: str, data: Path, seed: int) -> None:
    from wespeaker.models.speaker_model import get_speaker_model

    spec = SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml(size))
    torch.manual_seed(seed)
    model = get_speaker_model(spec["model"])(
        feat_dim=80, embed_dim=spec["embed_dim"], pooling_func="TSTP", two_emb_layer=False
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            # Signed scales and wide shifts: with milder ones every file's embedding is
            # within 0.95 cosine of every other's.
            module.weight.data.uniform_(0.5, 2.0)
            module.weight.data *= torch.randint(0, 2, module.weight.shape) * 2 - 1
            module.bias.data.normal_(0.0, 0.5)
            module.reset_running_stats()
            module.momentum = None
    torch.save(model.state_dict(), folder / "avg_model.pt")
    # BatchNorm statistics from 2-second excerpts of real speech, WeSpeaker's own features.
    speaker = _wespeaker.Speaker(str(folder))
    rows = [r for r in parity_audio.recordings(data) if r[0] in ("librispeech", "vctk")]
    feats = []
    for name, rel in rows[:25] + rows[50:75]:
        pcm, rate = load_pcm(data / name / rel)
        wav = to_16k(pcm * (1 << 15), rate)
        if wav.shape[1] >= 32_000:
            feats.append(speaker.compute_features(wav[:, :32_000], 16_000, cmn=True)[0])
    model.train()
    with torch.no_grad():
        model(torch.stack(feats[:32]))
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    torch.save(model.state_dict(), folder / "avg_model.pt")


def mean_embedding(speaker: object, data: Path) -> np.ndarray:
    """The mean torch embedding of 30 real recordings (not the calibration ones), for
    export_onnx.py's --mean_vec: random ResNets give every file a large common component."""
    rows = [r for r in parity_audio.recordings(data) if r[0] in ("librispeech", "vctk")]
    embeddings = []
    for name, rel in rows[1::4][:30]:
        pcm, rate = load_pcm(data / name / rel)
        embeddings.append(speaker.extract_embedding_from_pcm(pcm * (1 << 15), rate).numpy())
    return np.mean(embeddings, axis=0).astype(np.float32)


def export_onnx(speaker: object, out: Path, mean_vec: np.ndarray) -> None:
    """wespeaker/bin/export_onnx.py's export, with its --mean_vec subtraction."""
    import torch.nn as nn

    class Model(nn.Module):
        def __init__(self, model: nn.Module, mean_vec: torch.Tensor) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean_vec", mean_vec)

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            outputs = self.model(feats)
            embeds = outputs[-1] if isinstance(outputs, tuple) else outputs
            return embeds - self.mean_vec

    model = Model(speaker.model, torch.tensor(mean_vec, dtype=torch.float32))
    model.eval()
    torch.onnx.export(
        model,
        torch.ones(1, 200, 80),
        str(out),
        do_constant_folding=True,
        verbose=False,
        opset_version=14,
        input_names=["feats"],
        output_names=["embs"],
        dynamic_axes={"feats": {0: "B", 1: "T"}, "embs": {0: "B"}},
        dynamo=False,
    )


def versions() -> dict[str, str]:
    names = (
        "wespeaker-unofficial",
        "torch",
        "torchaudio",
        "torchcodec",
        "onnx",
        "onnxruntime",
        "soundfile",
        "soxr",
        "numpy",
    )
    return {n: md.version(n) for n in names}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def summary(cos: np.ndarray, keys: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for variant in parity_audio.VARIANTS:
        sel = np.array([k.endswith("|" + variant) for k in keys])
        if sel.any():
            out[variant] = {"min": float(cos[sel].min()), "mean": float(cos[sel].mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=parity_audio.default_data(ROOT))
    parser.add_argument("--variants", default=",".join(parity_audio.VARIANTS))
    parser.add_argument("--limit", type=int, default=0, help="first N inputs per variant")
    parser.add_argument("--every", type=int, default=1, help="every N-th input of each variant")
    parser.add_argument("--seed", type=int, default=20251124)
    parser.add_argument(
        "--skip-unscaled", action="store_true", help="skip the unscaled extract_embedding run"
    )
    args = parser.parse_args()
    import onnxruntime as ort

    register_small()
    data = args.data.resolve()
    work = args.out / f"wespeaker-resnet34-{args.size}-modeldir"
    if work.exists():
        shutil.rmtree(work)
    build_model_dir(work, args.size, data, args.seed)
    speaker = _wespeaker.Speaker(str(work))
    onnx_path = args.out / f"wespeaker-resnet34-{args.size}.onnx"
    mean_vec = mean_embedding(speaker, data)
    np.save(work / "mean_vec.npy", mean_vec)
    export_onnx(speaker, onnx_path, mean_vec)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    variants = tuple(args.variants.split(","))
    todo = parity_audio.items(data, variants)
    todo = parity_audio.subset(todo, args.limit, args.every)
    keys, e_onnx, e_torch, e_float, shas = [], [], [], [], {}
    seconds = t_torch = t_onnx = 0.0
    for item in todo:
        path = parity_audio.path_of(item, data)
        if item.variant != "orig":
            shas[item.key] = parity_audio.sha256_file(path)
        start = time.perf_counter()
        pcm, rate = load_pcm(path)
        feats = speaker.compute_features(to_16k(pcm * (1 << 15), rate), 16_000, cmn=True)
        emb_onnx = session.run(["embs"], {"feats": feats.numpy()})[0][0]
        t_onnx += time.perf_counter() - start
        start = time.perf_counter()
        pcm, rate = load_pcm(path)
        emb_torch = speaker.extract_embedding_from_pcm(pcm * (1 << 15), rate)
        t_torch += time.perf_counter() - start
        emb_float = emb_torch if args.skip_unscaled else speaker.extract_embedding(str(path))
        seconds += pcm.shape[1] / rate
        keys.append(item.key)
        e_onnx.append(emb_onnx)
        # The exported graph subtracts mean_vec; the torch model does not.
        e_torch.append(emb_torch.numpy() - mean_vec)
        e_float.append(emb_float.numpy() - mean_vec)
    a_onnx, a_torch, a_float = (unit(np.stack(e)) for e in (e_onnx, e_torch, e_float))
    orig = [i for i, k in enumerate(keys) if k.endswith("|orig")]
    labels = [keys[i].split("/")[0] + ":" + keys[i].split("/")[-2] for i in orig]
    cos = a_onnx[orig] @ a_onnx[orig].T
    same = np.equal.outer(labels, labels)
    off = ~np.eye(len(orig), dtype=bool)
    disc = {
        "mean_cosine_same_speaker": float(cos[same & off].mean()),
        "mean_cosine_different_speaker": float(cos[~same].mean()),
        "max_cosine_different_files": float(cos[off].max()),
    }
    print("discrimination (orig inputs):", json.dumps(disc, indent=1))
    if disc["mean_cosine_different_speaker"] > 0.9:
        raise SystemExit("random model is not discriminative: BatchNorm randomisation failed?")
    torch_vs_onnx = summary((a_onnx * a_torch).sum(1), keys)
    float_vs_int16 = None if args.skip_unscaled else summary((a_onnx * a_float).sum(1), keys)
    print("WeSpeaker torch model vs exported ONNX:", torch_vs_onnx)
    print("unscaled (torchaudio 2.9 extract_embedding) vs 16-bit scale:", float_vs_int16)

    dtype = np.float16 if args.size == "small" else np.float32
    np.savez(
        args.out / f"reference-{args.size}.npz",
        keys=np.array(keys),
        embeddings=np.stack(e_onnx).astype(dtype),
    )
    meta = {
        "model": onnx_path.name,
        "generator": "tools/parity/make_wespeaker_reference.py",
        "reference_call": "torchaudio.load, x32768, Resample to 16 kHz, "
        "Speaker.compute_features (kaldi fbank, hamming, CMN), onnxruntime (one file at a time)",
        "versions": versions(),
        "seed": args.seed,
        "inputs": len(keys),
        "audio_seconds": seconds,
        "original_torch_seconds": t_torch,
        "original_torch_rtf": seconds / t_torch,
        "original_onnx_seconds": t_onnx,
        "original_onnx_rtf": seconds / t_onnx,
        "discrimination": disc,
        "cosine_torch_vs_onnx": torch_vs_onnx,
        "cosine_unscaled_vs_int16_scale": float_vs_int16,
        "derived_sha256": shas,
    }
    (args.out / f"reference-{args.size}.json").write_text(json.dumps(meta, indent=1) + "\n")
    if args.size == "small":
        shutil.rmtree(work)  # the fixture keeps the ONNX file; the speed test uses full's dir
    print(
        f"{len(keys)} embeddings, {seconds:.0f} s of audio; WeSpeaker torch per file "
        f"{seconds / t_torch:.1f}x real time, its ONNX path {seconds / t_onnx:.1f}x"
    )


if __name__ == "__main__":
    main()
