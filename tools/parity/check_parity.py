"""Parity of a speakerdb family loader with its original framework, on every reference input.

    PYTHONPATH=. /work/main/.venv/bin/python tools/parity/check_parity.py \
        --family speechbrain --model /tmp/sb-full/ecapa-full \
        --reference /tmp/sb-full/reference-full.npz
    PYTHONPATH=. /work/main/.venv/bin/python tools/parity/check_parity.py \
        --family onnx --model /tmp/ws-full/wespeaker-resnet34-full.onnx \
        --reference /tmp/ws-full/reference-full.npz

Prints, per development set and variant (orig / 8k / 48k / mp3), the number of files and the
minimum and mean cosine between speakerdb's embedding and the original's (one file at a
time), then the same over everything. Fails (exit 1) below 0.999 for a file or 0.9999 mean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from encoder_driver import embed_files  # noqa: E402
from family_parity import Reference, input_paths  # noqa: E402
from parity_audio import VARIANTS, default_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("speechbrain", "onnx"), required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--array", default="embeddings")
    parser.add_argument("--every", type=int, default=1, help="every N-th reference input")
    parser.add_argument("--data", type=Path, default=default_data(ROOT))
    args = parser.parse_args()
    if args.family == "speechbrain":
        from speakerdb.model._speechbrain import load_speechbrain

        encoder = load_speechbrain(args.model, embedding_norm=args.array != "embeddings")
    else:
        from speakerdb.model._onnx import load_onnx

        encoder = load_onnx(args.model)
    reference = Reference(args.reference, args.array)
    ok = True
    all_cos = []
    start = time.perf_counter()
    for variant in VARIANTS:
        items = reference.items(variant, args.every)
        if not items:
            continue
        ours = embed_files(encoder, input_paths(reference, items, args.data))
        cos = (ours * np.stack([reference.vector(i) for i in items])).sum(axis=1)
        all_cos.append(cos)
        for name in sorted({i.set for i in items}):
            sel = np.array([i.set == name for i in items])
            print(
                f"{variant:5} {name:16} {sel.sum():4d} files  min {cos[sel].min():.7f}  "
                f"mean {cos[sel].mean():.7f}"
            )
        print(
            f"{variant:5} {'all':16} {len(cos):4d} files  min {cos.min():.7f}  "
            f"mean {cos.mean():.7f}"
        )
        ok &= bool(cos.min() >= 0.999 and cos.mean() >= 0.9999)
    total = np.concatenate(all_cos)
    print(
        f"every input: {len(total)} files, min {total.min():.7f}, mean {total.mean():.7f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
