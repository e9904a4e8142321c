"""Compare speakerdb's native .nemo loader with the embeddings NeMo made (its reference file).

    PYTHONPATH=. python tools/parity/nemo_parity.py \
        ~/.cache/speakerdb-parity/nemo/titanet-large.nemo

Reads MODEL.reference.npz beside the model (made by make_nemo_reference.py), regenerates or
reuses the derived inputs in the cache (checking every sha256), embeds every referenced file
with speakerdb (decode with soundfile as NeMo does, resample, prepare, batched encode) and
prints per set and variant the number of files, the minimum and the mean cosine with NeMo,
then one JSON line.

Also the small embedding driver the tests use (:func:`embed_paths`), until speakerdb's engine
serves every model family.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from derived_audio import derive, derived_path, sha256_file  # noqa: E402


def embed_paths(encoder: Any, paths: list[Path], batch_size: int = 16) -> dict[Path, np.ndarray]:
    """Decode (soundfile, as NeMo's get_embedding reads audio; channels averaged), resample,
    prepare, then encode in length-sorted zero-padded batches -> L2-normalised (D,) float32
    per path. ``encoder`` is any speakerdb SpeakerEncoder giving one chunk per recording."""
    chunks: dict[Path, torch.Tensor] = {}
    for path in paths:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        (chunk,) = encoder.prepare(encoder.resample(samples.mean(axis=1), rate))
        chunks[path] = chunk
    ordered = sorted(paths, key=lambda p: chunks[p].shape[0])
    out: dict[Path, np.ndarray] = {}
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start : start + batch_size]
        embeddings = encode_chunks(encoder, [chunks[p] for p in batch])
        for path, embedding in zip(batch, embeddings, strict=True):
            out[path] = embedding
    return out


def encode_chunks(encoder: Any, chunks: list[torch.Tensor]) -> np.ndarray:
    """(T_i, F) chunks -> (N, D) L2-normalised embeddings, as one zero-padded batch."""
    lengths = torch.tensor([c.shape[0] for c in chunks], dtype=torch.int64)
    batch = torch.zeros(len(chunks), int(lengths.max()), chunks[0].shape[1])
    for i, chunk in enumerate(chunks):
        batch[i, : chunk.shape[0]] = chunk
    emb = encoder.encode(batch, lengths).cpu().numpy()
    normalised: np.ndarray = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return normalised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--reference", type=Path, help="default: MODEL.reference.npz")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SPEAKERDB_TEST_DATA", HERE.parents[1].parent / "shared/data")),
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "speakerdb-parity"
        / "nemo",
    )
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from speakerdb.model._nemo import load_nemo

    reference = args.reference or args.model.with_suffix(".reference.npz")
    table = np.load(reference, allow_pickle=False)
    encoder = load_nemo(args.model)
    if encoder.weights_sha256 != str(table["model_sha256"]):
        raise SystemExit(f"{args.model} is not the model {reference} was made with")
    start = time.perf_counter()
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (folder, variant) in enumerate(zip(table["set"], table["variant"], strict=True)):
        groups.setdefault((str(folder), str(variant)), []).append(i)
    results = {}
    for (folder, variant), rows in sorted(groups.items()):
        paths = []
        for i in rows:
            rel = str(table["path"][i])
            path = args.data / folder / rel
            if variant != "orig":
                path = derived_path(args.cache / "derived", folder, rel, variant)
                if not path.is_file():
                    derive(args.data / folder / rel, variant, path)
            if sha256_file(path) != str(table["sha256"][i]):
                raise SystemExit(f"{path}: not the input NeMo embedded (sha256 differs)")
            paths.append(path)
        ours = embed_paths(encoder, paths, args.batch)
        theirs = table["embedding"][rows]
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        cosines = np.array([float(ours[p] @ t) for p, t in zip(paths, theirs, strict=True)])
        results[f"{folder}/{variant}"] = {
            "files": len(rows),
            "min": round(float(cosines.min()), 6),
            "mean": round(float(cosines.mean()), 6),
        }
        print(
            f"{folder:16s} {variant:5s} n={len(rows):4d} min={cosines.min():.6f} "
            f"mean={cosines.mean():.6f}",
            flush=True,
        )
    worst = min(r["min"] for r in results.values())
    print(
        f"{len(table['path'])} embeddings in {time.perf_counter() - start:.0f} s; "
        f"NeMo {table['nemo_version']}; worst cosine {worst:.6f}"
    )
    print(
        json.dumps(
            {
                "model": str(args.model),
                "nemo": str(table["nemo_version"]),
                "worst_cosine": worst,
                "groups": results,
            }
        )
    )


if __name__ == "__main__":
    main()
