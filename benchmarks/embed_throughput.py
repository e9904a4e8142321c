"""Embedding throughput: speakerdb's Embedder against a per-file baseline.

Same files, one run, each side warmed up first. For the built-in GE2E model (default):
  * reference: resemblyzer ``preprocess_wav`` + ``VoiceEncoder.embed_utterance``, file by file;
  * speakerdb: ``Embedder.embed_files`` on the whole list;
  * floor: the encoder alone on precomputed windows (the LSTM's compute cost).
With ``--model PATH`` (a NeMo archive, SpeechBrain folder or WeSpeaker ONNX file):
  * reference: the family's encoder file by file in the calling thread (decode, its own
    resampler and front end, one encoder call per file), as the original frameworks'
    per-file loops run; the originals themselves are timed by tools/parity/*_speed.py, in
    their own environments;
  * speakerdb: ``load_model(PATH).embed_files`` on the whole list (the engine);
  * floor: the encoder alone on precomputed features, one file per call.
Speed is audio seconds per wall second (x real time). Prints a summary, then one JSON line.

    python benchmarks/embed_throughput.py [--set librispeech] [--repeat 3] [--model PATH]
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
    parser.add_argument(
        "--model", default=None, help="ge2e (default) or the path of a bring-your-own model"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N files only")
    args = parser.parse_args()
    files = files_of(args.set)[: args.limit]
    if not files:
        sys.exit(f"no audio found under {DATA / args.set}")
    audio_seconds = sum(sf.info(str(f)).duration for f in files)
    from speakerdb.model._registry import resolve_model

    spec = resolve_model(args.model)
    if spec.path is not None:
        family_benchmark(spec, files, audio_seconds, args)
        return

    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    model = speakerdb.load_model(device="cpu")
    windows = torch.cat([prepare_utterance(f, encoder=model.encoder).windows for f in files])
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


def family_benchmark(spec, files: list[Path], audio_seconds: float, args) -> None:
    """--model PATH: the engine against the family's encoder driven file by file."""
    import numpy as np

    from speakerdb.model._audio import decode_file

    model = speakerdb.load_model(spec, device="cpu")
    encoder = model.encoder

    def features(path: Path) -> list[torch.Tensor]:
        data, rate = decode_file(path)
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        return encoder.prepare(encoder.resample(np.ascontiguousarray(mono), rate))

    def encode(chunks: list[torch.Tensor]) -> None:
        for chunk in chunks:
            encoder.encode(chunk[None], torch.tensor([chunk.shape[0]]))

    prepared = [features(f) for f in files]
    frames = sum(c.shape[0] for chunks in prepared for c in chunks)

    def run_reference() -> None:
        for f in files:
            encode(features(f))

    def run_ours() -> None:
        model.embed_files(files)

    def run_floor() -> None:
        for chunks in prepared:
            encode(chunks)

    for warm in (run_reference, run_ours, run_floor):
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
        "model": model.identity.label,
        "family": model.identity.family,
        "set": args.set,
        "files": len(files),
        "audio_seconds": round(audio_seconds, 1),
        "frames": int(frames),
        "reference_xrt": round(speed["reference"], 1),
        "speakerdb_xrt": round(speed["speakerdb"], 1),
        "floor_xrt": round(speed["floor"], 1),
        "speedup_vs_reference": round(speed["speakerdb"] / speed["reference"], 2),
        "fraction_of_floor": round(speed["speakerdb"] / speed["floor"], 3),
        "torch_threads": torch.get_num_threads(),
    }
    emit(
        [
            f"{model.identity.label} ({spec.path}): {len(files)} files, {audio_seconds:.0f} s "
            f"of audio, best of {args.repeat}",
            f"  family encoder file by file {speed['reference']:7.1f} x real time",
            f"  speakerdb embed_files       {speed['speakerdb']:7.1f} x real time "
            f"({record['speedup_vs_reference']:.2f}x the per-file loop)",
            f"  encoder floor               {speed['floor']:7.1f} x real time "
            f"(speakerdb reaches {record['fraction_of_floor']:.0%} of it)",
        ],
        record,
    )


if __name__ == "__main__":
    main()
