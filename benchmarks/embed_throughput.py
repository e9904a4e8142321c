"""Embedding throughput: speakerdb's Embedder against the reference GE2E pipeline.

Same files, one run, each side warmed up first:
  * reference: resemblyzer ``preprocess_wav`` + ``VoiceEncoder.embed_utterance``, file by file;
  * speakerdb: ``Embedder.embed_files`` on the whole list;
  * floor: the encoder alone on precomputed windows (the LSTM's compute cost).
Speed is audio seconds per wall second (x real time). Prints a summary, then one JSON line.

    python benchmarks/embed_throughput.py [--set librispeech] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speakerdb
from _common import DATA, emit
from speakerdb.model._utterance import prepare_utterance


def files_of(dataset: str) -> list[Path]:
    base = DATA / dataset
    out = []
    for name in ("manifest.jsonl", "singles.jsonl"):
        if (base / name).is_file():
            for line in (base / name).read_text().splitlines():
                out.append(base / json.loads(line)["audio_filepath"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="librispeech", help="folder of ../shared/data")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (best is kept)")
    args = parser.parse_args()
    files = files_of(args.set)
    if not files:
        sys.exit(f"no audio found under {DATA / args.set}")
    audio_seconds = sum(sf.info(str(f)).duration for f in files)

    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    model = speakerdb.load_model(device="cpu")
    windows = torch.cat([prepare_utterance(f).windows for f in files])
    encoder = model.encoder.network  # the floor measures the GE2E network alone

    def run_reference() -> None:
        for f in files:
            reference.embed_utterance(preprocess_wav(f))

    def run_ours() -> None:
        model.embed_files(files)

    def run_floor() -> None:
        with torch.inference_mode():
            for i in range(0, len(windows), 64):
                encoder(windows[i : i + 64])

    for warm in (run_reference, run_ours, run_floor):  # warm-up: caches, oneDNN primitives
        warm()
    best = {"reference": float("inf"), "speakerdb": float("inf"), "floor": float("inf")}
    for _ in range(args.repeat):  # interleaved, so drifting machine load hits all alike
        for name, fn in (
            ("reference", run_reference),
            ("speakerdb", run_ours),
            ("floor", run_floor),
        ):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)

    speed = {k: audio_seconds / v for k, v in best.items()}
    record = {
        "benchmark": "embed_throughput",
        "set": args.set,
        "files": len(files),
        "audio_seconds": round(audio_seconds, 1),
        "windows": int(windows.shape[0]),
        "reference_xrt": round(speed["reference"], 1),
        "speakerdb_xrt": round(speed["speakerdb"], 1),
        "floor_xrt": round(speed["floor"], 1),
        "speedup_vs_reference": round(speed["speakerdb"] / speed["reference"], 2),
        "fraction_of_floor": round(speed["speakerdb"] / speed["floor"], 3),
        "torch_threads": torch.get_num_threads(),
    }
    emit(
        [
            f"{len(files)} files, {audio_seconds:.0f} s of audio, {windows.shape[0]} windows, "
            f"best of {args.repeat}",
            f"  reference pipeline   {speed['reference']:7.1f} x real time",
            f"  speakerdb embed_files {speed['speakerdb']:6.1f} x real time "
            f"({record['speedup_vs_reference']:.2f}x the reference)",
            f"  encoder floor        {speed['floor']:7.1f} x real time "
            f"(speakerdb reaches {record['fraction_of_floor']:.0%} of it)",
        ],
        record,
    )


if __name__ == "__main__":
    main()
