"""The speech detector of many live sessions: each session's own silero pass per chunk (the
code before) against one pass shared by the chunks of concurrent sessions
(:class:`speakerdb.diarize._speech_batch.BatchedSpeechNet`, what sessions use now).

``--sessions`` threads in one process each stream real telephone speech (the repository's
pyannote sample, each session from its own offset) to its own SpeechDetector in 100 ms
chunks paced in real time, every session at its own random phase within the 100 ms (callers
do not speak in step). Measured per mode, the modes alternating ``--repeats`` times: the
CPU the detector takes per second of session audio (thread CPU inside ``push``, and the
whole process's CPU), how late a chunk's probabilities come (p50 / p99 of the wall time
from the chunk's due moment to the end of its ``push``) and, batched, the chunks' calls per
pass. The probabilities of both modes are compared (max absolute difference).

    python benchmarks/live_vad_batch.py [--sessions 32] [--seconds 10] [--repeats 2] [--wait-ms W]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit
from speakerdb.diarize._silero import SileroVAD
from speakerdb.diarize._speech import SpeechDetector
from speakerdb.diarize._speech_batch import BatchedSpeechNet
from speakerdb.model._embedder import single_threaded_torch

SAMPLE = ROOT / "tests" / "fixtures" / "pyannote_sample" / "sample.wav"
CHUNK = 1600  # 100 ms at 16 kHz, as the WebSocket clients send


def _run(
    audio: np.ndarray, sessions: int, seconds: float, batched: bool, wait_s: float | None
) -> dict[str, Any]:
    net = None
    if batched:
        net = BatchedSpeechNet(SileroVAD.shared())
        if wait_s is not None:
            net.max_wait_s = wait_s
    chunks = int(seconds * 10)
    rng = np.random.default_rng(0)
    phases = rng.uniform(0.0, 0.1, sessions)
    offsets = rng.integers(0, audio.size - chunks * CHUNK, sessions)
    cpu = [0.0] * sessions
    late: list[list[float]] = [[] for _ in range(sessions)]
    probs: list[np.ndarray | None] = [None] * sessions
    ready = threading.Barrier(sessions + 1)
    began = [0.0]

    def session(i: int) -> None:
        detector = SpeechDetector(net)
        out = []
        ready.wait()
        for k in range(chunks):
            due = began[0] + phases[i] + k * 0.1
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # a real-time caller's pacing: what is measured
            first = offsets[i] + k * CHUNK
            t0 = time.thread_time()
            with single_threaded_torch():
                out.append(detector.push(audio[first : first + CHUNK]))
            cpu[i] += time.thread_time() - t0
            late[i].append(time.monotonic() - due)
        probs[i] = np.concatenate(out)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    before = os.times()
    began[0] = time.monotonic() + 0.05
    ready.wait()
    for t in threads:
        t.join()
    after = os.times()
    process = after.user - before.user + after.system - before.system
    lateness = np.array([x for xs in late for x in xs])
    audio_s = sessions * chunks * CHUNK / 16000
    return {
        "mode": "batched" if batched else "per-session",
        "vad_cpu_per_audio_s": round(sum(cpu) / audio_s, 5),
        "process_cpu_per_audio_s": round(process / audio_s, 5),
        "late_p50_ms": round(float(np.percentile(lateness, 50)) * 1000, 2),
        "late_p99_ms": round(float(np.percentile(lateness, 99)) * 1000, 2),
        "calls_per_pass": round(net.calls / net.passes, 2) if net and net.passes else 1.0,
        "probabilities": probs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--wait-ms",
        type=float,
        default=None,
        help="BatchedSpeechNet.max_wait_s in ms (default: its own)",
    )
    args = parser.parse_args()
    audio, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == 16000
    SileroVAD.shared()  # loaded before anything is timed
    wait_s = BatchedSpeechNet().max_wait_s if args.wait_ms is None else args.wait_ms / 1000
    runs = [
        _run(audio, args.sessions, args.seconds, batched, wait_s)
        for _ in range(args.repeats)
        for batched in (False, True)
    ]
    difference = max(
        float(np.abs(a - b).max())
        for alone, together in zip(runs[0::2], runs[1::2], strict=True)
        for a, b in zip(alone.pop("probabilities"), together.pop("probabilities"), strict=True)
    )

    def mean(mode: str, key: str) -> float:
        return round(statistics.fmean(r[key] for r in runs if r["mode"] == mode), 5)

    keys = ("vad_cpu_per_audio_s", "process_cpu_per_audio_s", "late_p50_ms", "late_p99_ms")
    summary = {mode: {k: mean(mode, k) for k in keys} for mode in ("per-session", "batched")}
    record = {
        "benchmark": "live_vad_batch",
        "sessions": args.sessions,
        "seconds": args.seconds,
        "wait_ms": wait_s * 1000,
        "runs": runs,
        "summary": summary,
        "cpu_ratio": round(
            summary["batched"]["vad_cpu_per_audio_s"]
            / summary["per-session"]["vad_cpu_per_audio_s"],
            3,
        ),
        "max_probability_difference": difference,
        "load": os.getloadavg(),
    }
    lines = [
        f"speech detector of {args.sessions} real-time sessions, {args.seconds:g} s each"
        f", batched passes wait up to {wait_s * 1000:g} ms"
    ]
    for mode, s in summary.items():
        lines.append(
            f"{mode:12s} detector CPU {s['vad_cpu_per_audio_s']:.4f} s per audio s "
            f"(process {s['process_cpu_per_audio_s']:.4f}); chunk late p50 "
            f"{s['late_p50_ms']:.1f} ms, p99 {s['late_p99_ms']:.1f} ms"
        )
    passes = [r["calls_per_pass"] for r in runs if r["mode"] == "batched"]
    load = statistics.fmean(os.getloadavg())
    lines.append(
        f"batched / per-session CPU: {record['cpu_ratio']}x; calls per pass {passes}; "
        f"max probability difference {difference:.2g} (load {load:.1f})"
    )
    emit(lines, record)


if __name__ == "__main__":
    main()
