"""A child process for the crash and concurrency tests: enrolls synthetic speakers and
reports each enrollment on stdout the moment its call has returned.

    python tests/store_worker.py URL PREFIX COUNT SEED [--save-often] [--batch N] [--pause S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import fake_model, fake_utterance
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--save-often", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between enrollments")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    model = fake_model()
    with EnrollmentStore.open(args.url) as store:
        done = 0
        while done < args.count:
            size = min(args.batch, args.count - done)
            requests = []
            for i in range(done, done + size):
                n = int(rng.integers(1, 4))
                utterances = [fake_utterance(rng) for _ in range(n)]
                requests.append(EnrollRequest(f"{args.prefix}-{i:04d}", utterances))
            results = store.enroll_many(requests, model)
            for result in results:
                print(f"done {result.name} {result.speaker.utterances}", flush=True)
            done += size
            if rng.random() < 0.3:
                store.search(rng.standard_normal(16), 3, model)
            if args.pause:
                time.sleep(args.pause)
            if args.save_often:
                store.search(rng.standard_normal(16), 1, model)
                store.save_index()


if __name__ == "__main__":
    main()
