"""One countermeasure forward pass (a 4.04 s probe): whole width vs in pieces, per thread setup.

Three ways of computing the same prepared network (BatchNorm folded, channels-last), in
interleaved rounds in one process, on the same random 4.04 s input (the time does not depend
on the content):

- ``whole``: every stage at full width with torch's own intra-op threads (the network as it
  was prepared before pieces; the baseline);
- ``pieces, 1 thread``: the front end and wide blocks in pieces, torch at one thread;
- ``pieces, pool``: what ``Countermeasure.logits`` runs: the pieces on one worker per
  intra-op thread torch had, torch at one thread.

Reports the median and best milliseconds per pass of each, each one's speed-up over
``whole`` (medians) and the load average.

    python benchmarks/spoof_forward.py --model ../shared/models/aasist/AASIST.pth
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="AASIST .pth")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    from speakerdb import load_countermeasure
    from speakerdb.model._embedder import single_threaded_torch

    cm = load_countermeasure(args.model)
    net, tile = cm.net, cm.net.tile
    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((rng.standard_normal((1, cm.input_samples)) * 0.1).astype(np.float32))

    def whole() -> None:
        net.tile = None
        net(wave)

    def pieces() -> None:
        net.tile = tile
        with single_threaded_torch():
            net(wave)

    def pooled() -> None:
        net.tile = tile
        with single_threaded_torch(), ThreadPoolExecutor(threads) as pool:
            net(wave, pool)

    ways = {"whole": whole, "pieces, 1 thread": pieces, f"pieces, pool of {threads}": pooled}
    times: dict[str, list[float]] = {name: [] for name in ways}
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        for run in ways.values():
            run()  # warm-up: oneDNN primitives, allocator
        for _ in range(args.rounds):
            for name, run in ways.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    load = (load_before + os.getloadavg()[0]) / 2
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    best = {name: min(t) * 1000 for name, t in times.items()}
    lines = [f"{cm.identity.variant}: one forward pass of a 4.04 s probe, {args.rounds} rounds"]
    lines += [
        f"{name:22s} median {median[name]:7.1f} ms  best {best[name]:7.1f} ms  "
        f"x{median['whole'] / median[name]:.2f}"
        for name in ways
    ]
    lines.append(f"load average ~{load:.1f} on {os.cpu_count()} CPUs, torch threads {threads}")
    emit(
        lines,
        {
            "benchmark": "spoof_forward",
            "variant": cm.identity.variant,
            "rounds": args.rounds,
            "median_ms": {k: round(v, 1) for k, v in median.items()},
            "best_ms": {k: round(v, 1) for k, v in best.items()},
            "speedup_vs_whole": {k: round(median["whole"] / v, 2) for k, v in median.items()},
            "threads": threads,
            "load_average": round(load, 2),
        },
    )


if __name__ == "__main__":
    main()
