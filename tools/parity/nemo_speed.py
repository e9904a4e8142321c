"""Speed of NeMo's own inference (a ``get_embedding`` loop) against speakerdb's native loader,
on the same files, with the same .nemo model (full-size TitaNet-L with random weights), in
alternating rounds of one run.

    PYTHONPATH=. python tools/parity/nemo_speed.py \
        --model ~/.cache/speakerdb-parity/nemo/titanet-large.nemo \
        [--nemo-python /work/refenv/nemo/bin/python] [--set librispeech] [--rounds 2]

Each side runs in its own process (NeMo in its reference environment), loads the model and
embeds one file before the clock starts, then embeds every file of the set's manifest:
NeMo with ``get_embedding`` per file (it reads with soundfile and resamples with librosa
itself); speakerdb by decoding with soundfile, resampling, computing features and encoding in
batches of files of similar duration (``--batch``; 1 = file by file like NeMo), in one loop
with torch's intra-op threads (like NeMo) and/or in one single-threaded loop per core
(``--workers``). Real-time factor = seconds of audio / wall-clock seconds. The machine's load
average is printed with each run: other processes on the machine slow both sides. Prints a
table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def manifest_files(data: Path, folder: str) -> list[Path]:
    files = []
    for line in (data / folder / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            files.append(data / folder / json.loads(line)["audio_filepath"])
    return files


def run_nemo(model: Path, files: list[Path], threads: int) -> dict[str, Any]:
    import torch
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    torch.set_num_threads(threads)
    net = EncDecSpeakerLabelModel.restore_from(str(model), map_location="cpu")
    net.eval()
    net.get_embedding(str(files[0]))  # warm-up, not timed
    start = time.perf_counter()
    for path in files:
        net.get_embedding(str(path))
    return {"seconds": time.perf_counter() - start}


def run_speakerdb(
    model: Path, files: list[Path], threads: int, batch: int, workers: int
) -> dict[str, Any]:
    """Batches of files of similar duration; ``workers`` threads each take whole batches
    (decode, resample, features, encode). With several workers every torch operation runs
    single-threaded, one batch per core: no OpenMP barrier per operation, which a core that
    is busy elsewhere would stall."""
    import queue
    import threading

    import soundfile as sf
    import torch

    sys.path.insert(0, str(ROOT))
    from speakerdb.model._nemo import load_nemo

    torch.set_num_threads(threads if workers == 1 else 1)
    encoder = load_nemo(model)

    def features(path: Path) -> torch.Tensor:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        chunk: torch.Tensor = encoder.prepare(encoder.resample(samples.mean(axis=1), rate))[0]
        return chunk

    def encode(group: list[torch.Tensor]) -> None:
        lengths = torch.tensor([c.shape[0] for c in group])
        padded = torch.zeros(len(group), int(lengths.max()), group[0].shape[1])
        for i, c in enumerate(group):
            padded[i, : c.shape[0]] = c
        encoder.encode(padded, lengths)

    warm = features(files[0])
    encode([warm])  # warm-up, not timed
    durations = {f: sf.info(str(f)).frames / sf.info(str(f)).samplerate for f in files}
    ordered = sorted(files, key=durations.__getitem__)
    batches: queue.SimpleQueue[list[Path]] = queue.SimpleQueue()
    for s in range(0, len(ordered), batch):
        batches.put(ordered[s : s + batch])
    front = [0.0] * workers

    def work(slot: int) -> None:
        while True:
            try:
                group = batches.get_nowait()
            except queue.Empty:
                return
            t = time.perf_counter()
            chunks = [features(p) for p in group]
            front[slot] += time.perf_counter() - t
            encode(chunks)

    start = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    total = time.perf_counter() - start
    return {"seconds": total, "front_end_thread_seconds": sum(front)}


def worker(args: argparse.Namespace) -> None:
    files = manifest_files(args.data, args.set)
    if args.impl == "nemo":
        result = run_nemo(args.model, files, args.threads)
    else:
        result = run_speakerdb(args.model, files, args.threads, args.batch, int(args.workers))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--nemo-python", default="/work/refenv/nemo/bin/python")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SPEAKERDB_TEST_DATA", ROOT.parent / "shared" / "data")),
    )
    parser.add_argument("--set", default="librispeech")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--batch", type=int, default=1, help="files per encode call")
    parser.add_argument(
        "--workers",
        default="1x1,1x2,2x1",
        help="speakerdb configurations, comma-separated WORKERSxTHREADS: worker loops x torch "
        "threads (with several workers torch runs single-threaded)",
    )
    parser.add_argument(
        "--nemo-threads", default="2,1", help="NeMo configurations: torch threads, comma-separated"
    )
    parser.add_argument("--impl", choices=("nemo", "speakerdb"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        worker(args)
        return

    import soundfile as sf

    files = manifest_files(args.data, args.set)
    audio = sum(sf.info(str(f)).duration for f in files)
    common = [str(Path(__file__).resolve()), "--model", str(args.model), "--data", str(args.data)]
    common += ["--set", args.set, "--threads", str(args.threads), "--batch", str(args.batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    configs: dict[str, tuple[str, list[str]]] = {}
    for n in args.nemo_threads.split(","):
        configs[f"nemo-{n}t"] = (args.nemo_python, ["--impl", "nemo", "--threads", n])
    for entry in args.workers.split(","):
        workers, _, threads = entry.partition("x")
        name = f"speakerdb-{workers}w{threads or args.threads}t"
        extra = ["--impl", "speakerdb", "--workers", workers]
        configs[name] = (sys.executable, [*extra, "--threads", threads or str(args.threads)])
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (python, extra) in configs.items():
            out = subprocess.run(
                [python, *common, *extra], env=env, capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            seconds = float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            runs[name].append(seconds)
            load = os.getloadavg()[0]
            print(
                f"{name:14s} {seconds:7.1f} s {audio / seconds:6.1f} x real time (load {load:.1f})",
                flush=True,
            )
    summary: dict[str, Any] = {
        "model": str(args.model),
        "set": args.set,
        "files": len(files),
        "audio_seconds": round(audio, 1),
        "threads": args.threads,
        "batch": args.batch,
        "seconds": runs,
    }
    nemo_best = min(
        statistics.median(v) for k, v in runs.items() if k.startswith("nemo")
    )  # NeMo's best configuration is the baseline
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        summary[f"{name}_rtf_median"] = round(audio / median, 1)
        if not name.startswith("nemo"):
            summary[f"{name}_speedup_median"] = round(nemo_best / median, 2)
            print(
                f"{name}: {nemo_best / median:.2f}x NeMo's best (medians of {args.rounds} rounds)"
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
