"""Embedding throughput: speakerdb's Embedder against a per-file baseline.

Same files, one run, each side warmed up first. For the built-in GE2E model (default):
  * reference: resemblyzer ``preprocess_wav`` + ``VoiceEncoder.embed_utterance``, file by file;
  * speakerdb: ``Embedder.embed_files`` on the whole list;
  * floor: the encoder alone on precomputed windows (the LSTM's compute cost).
With ``--model PATH`` (a NeMo archive, SpeechBrain folder or WeSpeaker ONNX file):
  * original: the framework's own per-file inference, run by benchmarks/_originals.py in its
    reference environment (``--reference-python``; see tools/parity/README.md): NeMo's
    ``get_embedding`` loop, SpeechBrain's ``load_audio`` + ``encode_batch`` per file,
    WeSpeaker's ``Speaker.extract_embedding`` per file (with ``--reference-model-dir``) and its
    infer_onnx.py recipe on the ONNX file;
  * speakerdb: ``load_model(PATH).embed_files`` on the whole list (the engine: speech checks
    and quality measures included, which the originals do not do);
  * on the first ``--limit`` (default 80) files of librispeech + vctk; both sides at each
    ``--threads`` count (``torch.set_num_threads``; the engine runs one single-threaded
    encoder per thread), interleaved rounds, best round kept, both warmed up at each count.
  Ratios: at equal threads, and each side at its best thread count. Load average printed.
Speed is audio seconds per wall second (x real time) and files/s. Prints a summary, then one
JSON line.

    python benchmarks/embed_throughput.py [--set librispeech] [--repeat 3]
    python benchmarks/embed_throughput.py --model PATH --reference-python REFENV/bin/python \
        [--limit 80] [--repeat 2] [--threads 1,2]
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
    parser.add_argument(
        "--reference-python",
        default=None,
        help="with --model: the interpreter of the original framework's environment "
        "(tools/parity/setup_*.sh); its own per-file inference is timed in the same run",
    )
    parser.add_argument(
        "--reference-model-dir",
        default=None,
        help="with an ONNX --model: WeSpeaker's checkpoint folder it was exported from "
        "(default: PATH without .onnx plus -modeldir, if present)",
    )
    parser.add_argument(
        "--threads",
        default="1,2",
        help="with --model: torch thread counts, comma-separated; both sides run at each",
    )
    args = parser.parse_args()
    from speakerdb.model._registry import resolve_model

    spec = resolve_model(args.model)
    if spec.path is not None:
        files = family_files(args.limit or 80)
        audio_seconds = sum(sf.info(str(f)).duration for f in files)
        family_benchmark(spec, files, audio_seconds, args)
        return
    files = files_of(args.set)[: args.limit]
    if not files:
        sys.exit(f"no audio found under {DATA / args.set}")
    audio_seconds = sum(sf.info(str(f)).duration for f in files)

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


def family_files(count: int) -> list[Path]:
    """Real speech for --model: LibriSpeech (its manifest, 2-35 s) and VCTK (1-6 s) files
    alternating, the first ``count``."""
    libri = files_of("librispeech")[:50]
    vctk = files_of("vctk")
    mixed = [f for pair in zip(libri, vctk, strict=False) for f in pair]
    longer = libri if len(libri) > len(vctk) else vctk
    return (mixed + longer[len(mixed) // 2 :])[:count]


class Originals:
    """The original framework in the reference interpreter (benchmarks/_originals.py): one
    child process for the whole run, asked for one timed pass per request."""

    def __init__(self, python: str, spec: dict) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("_originals.py")), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.names: list[str] = self._reply()["ready"]

    def _reply(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # frameworks print lines of their own too
            if line.startswith("@speakerdb-bench "):
                return json.loads(line.split(" ", 1)[1])
        raise SystemExit(f"the reference process ended (exit {self.proc.wait()})")

    def time(self, threads: int) -> dict[str, float]:
        """Seconds of one pass over every file, per original, at ``threads`` torch threads."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"threads": threads}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def family_benchmark(spec, files: list[Path], audio_seconds: float, args) -> None:
    """--model PATH: the engine against the original framework's per-file inference (with
    --reference-python), in alternating rounds at each thread count; without it, the
    original side is left out."""
    import os

    threads = [int(t) for t in args.threads.split(",")]
    model = speakerdb.load_model(spec, device="cpu")
    family = model.identity.family
    originals = None
    if args.reference_python:
        model_dir = args.reference_model_dir
        if model_dir is None and family == "onnx":
            guess = Path(str(spec.path).removesuffix(".onnx") + "-modeldir")
            model_dir = str(guess) if guess.is_dir() else None
        originals = Originals(
            args.reference_python,
            {
                "family": family,
                "model": str(Path(spec.path).resolve()),
                "model_dir": model_dir,
                "files": [str(f) for f in files],
            },
        )

    def run_ours(n: int) -> float:
        # The engine runs one single-threaded encoder per torch thread it finds (CPU).
        torch.set_num_threads(n)
        model.embed_files(files[:1])  # warm-up at this thread count, untimed
        start = time.perf_counter()
        model.embed_files(files)
        return time.perf_counter() - start

    best: dict[str, dict[int, float]] = {}
    loads = []
    for round_number in range(args.repeat):  # interleaved: drifting load hits every side
        for n in threads:
            timed = {} if originals is None else originals.time(n)
            timed["speakerdb"] = run_ours(n)
            loads.append(os.getloadavg()[0])
            for name, seconds in timed.items():
                best.setdefault(name, {})[n] = min(seconds, best.get(name, {}).get(n, 1e30))
                print(
                    f"round {round_number + 1}, {n} thread(s): {name:46s} {seconds:7.1f} s "
                    f"(load {loads[-1]:.1f})",
                    file=sys.stderr,
                    flush=True,
                )
    if originals is not None:
        originals.close()

    def xrt(name: str, n: int) -> float:
        return audio_seconds / best[name][n]

    ours = best["speakerdb"]
    ours_best = min(ours.values())
    record: dict = {
        "benchmark": "embed_throughput",
        "model": model.identity.label,
        "family": family,
        "path": str(spec.path),
        "files": len(files),
        "audio_seconds": round(audio_seconds, 1),
        "rounds": args.repeat,
        "load_average_min_max": [round(min(loads), 1), round(max(loads), 1)],
        "cpus": os.cpu_count(),
        "speakerdb_xrt": {n: round(xrt("speakerdb", n), 2) for n in threads},
        "speakerdb_files_per_s": {n: round(len(files) / ours[n], 2) for n in threads},
    }
    lines = [
        f"{model.identity.label} ({family}, {spec.path}): {len(files)} files, "
        f"{audio_seconds:.0f} s of audio, best of {args.repeat} interleaved rounds, "
        f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs",
    ]
    for n in threads:
        lines.append(
            f"  speakerdb engine, {n} thread(s){'':24s} {xrt('speakerdb', n):6.1f} x real time "
            f"{len(files) / ours[n]:6.2f} files/s"
        )
    record["originals"] = {}
    for name in [k for k in best if k != "speakerdb"]:
        mine = best[name]
        entry = {
            "xrt": {n: round(xrt(name, n), 2) for n in threads},
            "files_per_s": {n: round(len(files) / mine[n], 2) for n in threads},
            "speedup_same_threads": {n: round(mine[n] / ours[n], 2) for n in threads},
            "speedup_best_vs_best": round(min(mine.values()) / ours_best, 2),
        }
        record["originals"][name] = entry
        for n in threads:
            lines.append(
                f"  {name + f', {n} thread(s)':57s} {xrt(name, n):6.1f} x real time "
                f"{len(files) / mine[n]:6.2f} files/s  -> speakerdb "
                f"{entry['speedup_same_threads'][n]:.2f}x at equal threads"
            )
        lines.append(
            f"  speakerdb at its best vs {name} at its best: {entry['speedup_best_vs_best']:.2f}x"
        )
    emit(lines, record)


if __name__ == "__main__":
    main()
