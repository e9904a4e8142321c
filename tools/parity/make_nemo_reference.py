"""Reference embeddings from NVIDIA NeMo itself, for speakerdb's native .nemo loader.

Runs in the separate environment made by setup_reference_env.sh (never in speakerdb's):

    /work/refenv/nemo/bin/python tools/parity/make_nemo_reference.py \
        --conf-dir NEMO_CHECKOUT/examples/speaker_tasks/recognition/conf \
        [--models titanet-small,speakernet-small,ecapa-small,titanet-large]

For each model it builds NeMo's ``EncDecSpeakerLabelModel`` from NeMo's own example config
(the small models: the same config with few channels and classes, so that the .nemo is small
enough to commit), gives it random but discriminative weights (BatchNorm scales and shifts
randomised, running statistics estimated on real speech: with BatchNorm left at its identity
initialisation TitaNet gives nearly one embedding for every input), saves it with NeMo's
``save_to``, restores it with ``restore_from`` and embeds, with ``get_embedding``, every
recording of every manifest of ../shared/data (librispeech, vctk, arabic-commands, telephone)
and the 8 kHz, 48 kHz and MP3 versions of the 16 kHz ones (see derived_audio.py).

Outputs: small models -> tests/fixtures/models/nemo/NAME.nemo and NAME.reference.npz (committed);
titanet-large -> CACHE/titanet-large.nemo and its .npz (too large to commit; used by the speed
benchmark and the full-size parity run). Derived audio -> CACHE/derived/ (never the repository).

The example configs are not part of the pip package: pass the folder of a NeMo checkout of the
pinned version (examples/speaker_tasks/recognition/conf).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from derived_audio import (  # noqa: E402
    SOURCE_RATE,
    VARIANTS,
    derive,
    derived_path,
    reference_items,
    sha256_file,
)

# name -> (NeMo example config, overrides applied to its `model` node, committed?)
MODELS: dict[str, tuple[str, dict[str, object], bool]] = {
    "titanet-small": (
        "titanet-small.yaml",
        {
            "model_defaults.filters": 64,
            "encoder.jasper.4.filters": 192,
            "decoder.feat_in": 192,
            "decoder.num_classes": 16,
        },
        True,
    ),
    "speakernet-small": (
        "SpeakerNet_verification_3x2x256.yaml",
        {
            **{f"encoder.jasper.{i}.filters": 64 for i in range(4)},
            "encoder.jasper.4.filters": 192,
            "decoder.feat_in": 192,
            "decoder.num_classes": 16,
        },
        True,
    ),
    "ecapa-small": (
        "ecapa_tdnn.yaml",
        {
            "encoder.filters": [64, 64, 64, 64, 192],
            "decoder.feat_in": 192,
            "decoder.num_classes": 16,
        },
        True,
    ),
    "titanet-large": ("titanet-large.yaml", {}, False),
}

SEED = 20251124
CALIBRATION_BATCHES = 8
CALIBRATION_BATCH = 8
CALIBRATION_SECONDS = 3.0


def log(message: str) -> None:
    print(message, flush=True)


def build_config(conf_dir: Path, name: str) -> Any:  # an omegaconf DictConfig
    from omegaconf import OmegaConf

    conf_file, overrides, _ = MODELS[name]
    root = OmegaConf.load(conf_dir / conf_file)
    model = root.model
    for dotted, value in overrides.items():
        OmegaConf.update(model, dotted, value, merge=False)
    # No training data: the datasets' manifests are placeholders, and the augmentors would try
    # to open noise manifests. sample_rate stays: get_embedding resamples to train_ds.sample_rate.
    for split in ("train_ds", "validation_ds"):
        if split in model:
            model[split].manifest_filepath = None
            model[split].pop("augmentor", None)
    return model


def randomise_batchnorm(model, generator) -> None:  # noqa: ANN001
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if module.affine:
                with torch.no_grad():
                    module.weight.copy_(
                        torch.empty_like(module.weight).uniform_(0.5, 1.5, generator=generator)
                    )
                    module.bias.copy_(
                        torch.empty_like(module.bias).normal_(0.0, 0.3, generator=generator)
                    )
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches


def calibrate_batchnorm(model, files: list[Path]) -> None:  # noqa: ANN001
    """Estimate every BatchNorm's running statistics on real speech: equal-length crops (no
    padding inside a batch), the network otherwise in eval mode (no dither, dropout or
    spec augment)."""
    import soundfile as sf
    import torch

    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    crop = int(CALIBRATION_SECONDS * SOURCE_RATE)
    crops = []
    for path in files:
        samples, rate = sf.read(path, dtype="float32")
        if rate == SOURCE_RATE and len(samples) >= crop:
            start = (len(samples) - crop) // 2
            crops.append(samples[start : start + crop])
        if len(crops) == CALIBRATION_BATCHES * CALIBRATION_BATCH:
            break
    if len(crops) < CALIBRATION_BATCHES * CALIBRATION_BATCH:
        raise SystemExit(f"not enough calibration audio ({len(crops)} crops)")
    with torch.no_grad():
        for b in range(CALIBRATION_BATCHES):
            batch = torch.from_numpy(
                np.stack(crops[b * CALIBRATION_BATCH : (b + 1) * CALIBRATION_BATCH])
            )
            lengths = torch.full((batch.shape[0],), crop, dtype=torch.int64)
            model.forward(input_signal=batch, input_signal_length=lengths)
    model.eval()


def discrimination(model, files: list[Path]) -> float:  # noqa: ANN001
    """Mean pairwise cosine of the embeddings of recordings of different speakers."""
    embs = np.stack([model.get_embedding(str(f)).squeeze(0).cpu().numpy() for f in files])
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    sims = embs @ embs.T
    return float(sims[~np.eye(len(files), dtype=bool)].mean())


def make_model(name: str, conf_dir: Path, data: Path, out: Path) -> Path:
    import torch
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = EncDecSpeakerLabelModel(cfg=build_config(conf_dir, name))
    randomise_batchnorm(model, generator)
    libri = [data / "librispeech" / rel for s, rel in reference_items(data) if s == "librispeech"]
    vctk = [data / "vctk" / rel for s, rel in reference_items(data) if s == "vctk"]
    singles = libri[50:]  # 120 voices with one recording each
    # Calibrate on LibriSpeech and VCTK voices interleaved; check on 20 other voices.
    calibration = [f for pair in zip(singles[:100], vctk, strict=False) for f in pair]
    calibration += singles[len(vctk) : 100]
    calibrate_batchnorm(model, calibration)
    spread = discrimination(model, singles[100:])
    log(f"{name}: mean cosine between 20 different speakers {spread:.3f}")
    if spread > 0.9:
        raise SystemExit(f"{name}: random weights are not discriminative ({spread:.3f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out))
    log(f"{name}: saved {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return out


def embed_all(
    model_path: Path, data: Path, cache: Path, variants: list[str], limit: int | None
) -> dict[str, np.ndarray]:
    import torch
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    model = EncDecSpeakerLabelModel.restore_from(str(model_path), map_location="cpu")
    model.eval()
    items = reference_items(data)
    if limit:
        items = items[:: max(1, len(items) // limit)]
    rows: dict[str, list] = {k: [] for k in ("set", "path", "variant", "sha256", "embedding")}
    for variant in variants:
        start = time.perf_counter()
        count = 0
        for folder, rel in items:
            source = data / folder / rel
            if variant == "orig":
                path = source
            else:
                if folder == "telephone":
                    continue
                path = derived_path(cache / "derived", folder, rel, variant)
                if not path.is_file():
                    derive(source, variant, path)
            with torch.no_grad():
                emb = model.get_embedding(str(path)).squeeze(0).cpu().numpy()
            rows["set"].append(folder)
            rows["path"].append(rel)
            rows["variant"].append(variant)
            rows["sha256"].append(sha256_file(path))
            rows["embedding"].append(emb.astype(np.float32))
            count += 1
        log(f"  {variant}: {count} files in {time.perf_counter() - start:.1f} s")
    return {
        "set": np.array(rows["set"]),
        "path": np.array(rows["path"]),
        "variant": np.array(rows["variant"]),
        "sha256": np.array(rows["sha256"]),
        "embedding": np.stack(rows["embedding"]),
    }


def versions() -> dict[str, str]:
    import librosa
    import nemo
    import soundfile
    import soxr
    import torch

    return {
        "nemo_version": nemo.__version__,
        "torch_version": torch.__version__,
        "librosa_version": librosa.__version__,
        "soxr_version": soxr.__version__,
        "soundfile_version": soundfile.__version__,
        "libsndfile_version": soundfile.__libsndfile_version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--conf-dir",
        type=Path,
        default=os.environ.get("NEMO_CONF_DIR"),
        help="NeMo checkout's examples/speaker_tasks/recognition/conf (or $NEMO_CONF_DIR)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SPEAKERDB_TEST_DATA", ROOT.parent / "shared" / "data")),
        help="development speech (default $SPEAKERDB_TEST_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "speakerdb-parity"
        / "nemo",
    )
    parser.add_argument("--fixtures", type=Path, default=ROOT / "tests/fixtures/models/nemo")
    parser.add_argument("--models", default="titanet-small,speakernet-small,ecapa-small")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit", type=int, default=None, help="embed about N files (trial)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine OpenMP's spinning threads make "
        "NeMo many times slower; the results do not depend on it)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="re-embed with an existing .nemo instead of a new one"
    )
    args = parser.parse_args()
    if args.conf_dir is None or not (args.conf_dir / "titanet-large.yaml").is_file():
        parser.error("--conf-dir must be NeMo's examples/speaker_tasks/recognition/conf")

    import torch

    torch.set_num_threads(args.threads)
    info = versions()
    log(json.dumps(info))
    variants = args.variants.split(",")
    for name in args.models.split(","):
        conf_file, overrides, committed = MODELS[name]
        folder = args.fixtures if committed else args.cache
        model_path = folder / f"{name}.nemo"
        if not (args.reuse and model_path.is_file()):
            make_model(name, args.conf_dir, args.data, model_path)
        log(f"{name}: embedding with NeMo's get_embedding")
        table = embed_all(model_path, args.data, args.cache, variants, args.limit)
        conf_sha = hashlib.sha256((args.conf_dir / conf_file).read_bytes()).hexdigest()
        np.savez_compressed(
            folder / f"{name}.reference.npz",
            **table,
            model_sha256=np.array(sha256_file(model_path)),
            config=np.array(json.dumps({"file": conf_file, "sha256": conf_sha, **overrides})),
            **{k: np.array(v) for k, v in info.items()},
        )
        log(f"{name}: wrote {folder / f'{name}.reference.npz'} ({len(table['path'])} embeddings)")


if __name__ == "__main__":
    main()
