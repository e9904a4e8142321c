"""Shared timing code of speechbrain_speed.py and wespeaker_speed.py.

Our side runs in speakerdb's environment (this interpreter); the original framework's side
runs in the reference environment through a child interpreter (``--ref-python``), on the same
files, one after the other (never concurrently), each after a warm-up file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import encoder_driver  # noqa: E402
import parity_audio  # noqa: E402


def speed_files(data: Path, count: int) -> list[Path]:
    """Real speech of every length: librispeech (2-35 s), vctk, telephone (8 kHz) files."""
    rows = parity_audio.recordings(data)
    picked = [r for r in rows if r[0] == "librispeech"][:50]
    picked += [r for r in rows if r[0] == "vctk"][:20]
    picked += [r for r in rows if r[0] == "telephone"][::9]
    return [data / s / rel for s, rel in picked][:count]


def audio_seconds(paths: list[Path]) -> float:
    import soundfile as sf

    return sum(sf.info(str(p)).duration for p in paths)


def time_ours(encoder: object, paths: list[Path], batch_size: int) -> dict[str, float]:
    """Wall time of decode / resample+front end / encoder over ``paths`` (seconds)."""
    encoder_driver.prepare_file(encoder, paths[0])  # warm-up
    encoder_driver.embed_files(encoder, paths[:1])
    start = time.perf_counter()
    decoded = [encoder_driver.decode(p) for p in paths]
    t_decode = time.perf_counter() - start
    start = time.perf_counter()
    prepared = [encoder.prepare(encoder.resample(s, r)) for s, r in decoded]  # type: ignore[attr-defined]
    t_front = time.perf_counter() - start
    start = time.perf_counter()
    encoder_driver.embed_prepared(encoder, prepared, batch_size)
    t_encode = time.perf_counter() - start
    return {
        "decode": t_decode,
        "front_end": t_front,
        "encoder": t_encode,
        "total": t_decode + t_front + t_encode,
    }


def time_ours_parallel(encoder: object, paths: list[Path], workers: int) -> dict[str, float]:
    """The engine's CPU layout: ``workers`` threads, each decoding, preparing and encoding
    its own files with a single-threaded torch (or onnxruntime session), one file at a time.
    Only the total is meaningful (stages overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder_driver.embed_files(encoder, paths[:1])  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda p: encoder_driver.embed_files(encoder, [p]), paths))
        total = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return {
        "decode": float("nan"),
        "front_end": float("nan"),
        "encoder": float("nan"),
        "total": total,
    }


def run_original(ref_python: str, code: str, args: dict[str, object]) -> dict[str, float]:
    """Run ``code`` (which prints one JSON object last) in the reference interpreter."""
    out = subprocess.run(
        [ref_python, "-c", code, json.dumps(args)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate(
    rounds: int,
    original: Callable[[], dict[str, float]],
    ours: Callable[[], dict[str, dict[str, float]]],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Run original, ours, original, ours ... and keep each one's fastest round (the machine
    is shared: the least disturbed run is the best estimate of each side's own cost)."""
    best_original: dict[str, float] = {}
    best_ours: dict[str, dict[str, float]] = {}
    for round_number in range(rounds):
        for label, elapsed in original().items():
            print(f"round {round_number + 1}: original {label}: {elapsed:.1f} s", flush=True)
            best_original[label] = min(elapsed, best_original.get(label, float("inf")))
        for label, times in ours().items():
            print(
                f"round {round_number + 1}: speakerdb {label}: {times['total']:.1f} s", flush=True
            )
            if label not in best_ours or times["total"] < best_ours[label]["total"]:
                best_ours[label] = times
    return best_original, best_ours


def load_average() -> str:
    import os

    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def report(
    name: str, seconds: float, original: dict[str, float], ours: dict[str, dict[str, float]]
) -> None:
    print(f"{seconds:.0f} s of audio, torch threads {torch.get_num_threads()}, {load_average()}")
    for label, elapsed in original.items():
        print(f"  original {label:<34} {elapsed:8.1f} s  {seconds / elapsed:7.1f}x real time")
    base = min(original.values())
    for label, t in ours.items():
        stages = (
            ""
            if t["decode"] != t["decode"]  # NaN: overlapping stages in parallel mode
            else f"; decode {t['decode']:.1f} s, front end {t['front_end']:.1f} s, "
            f"encoder {t['encoder']:.1f} s"
        )
        print(
            f"  speakerdb {label:<33} {t['total']:8.1f} s  {seconds / t['total']:7.1f}x real time"
            f"  ({base / t['total']:.2f}x the fastest original{stages})"
        )
