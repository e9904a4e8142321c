"""The acceptance scenario of verification and identification, through the real SpeakerDB on a
real SQLite file, at the model's default threshold:

5 speakers (LibriSpeech test-other) enrolled from 3 random recordings each; every other
recording of theirs verified against its own speaker (genuine) and against the 4 others
(cross-speaker), and identified among the 5; the 120 never-enrolled LibriSpeech voices of
singles.jsonl identified (they should come out unknown). Repeated over random draws.

    python benchmarks/enrollment_protocol.py [--draws 5] [--set librispeech]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit
from speakerdb import SpeakerDB, load_model
from speakerdb.enroll._lists import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--set", default="librispeech")
    parser.add_argument("--enroll", type=int, default=3, help="recordings per enrolled speaker")
    args = parser.parse_args()
    entries = read_manifest(DATA / args.set / "manifest.jsonl")
    singles_path = DATA / args.set / "singles.jsonl"
    unknown = [e.path for e in read_manifest(singles_path)] if singles_path.exists() else []
    speakers = sorted({e.speaker for e in entries})
    model = load_model(device="cpu")
    counts = {"genuine": [0, 0], "cross": [0, 0], "top1": [0, 0], "unknown": [0, 0]}
    rng = np.random.default_rng(0)
    for _ in range(args.draws):
        with (
            tempfile.TemporaryDirectory() as folder,
            SpeakerDB.open(f"{folder}/p.sqlite", model=model) as db,
        ):
            probes: list[tuple[str, Path]] = []
            for name in speakers:
                files = [e.path for e in entries if e.speaker == name]
                order = rng.permutation(len(files))
                db.enroll(name, [files[i] for i in order[: args.enroll]])
                probes += [(name, files[i]) for i in order[args.enroll :]]
            for claimed in speakers:
                for result, (owner, _) in zip(
                    db.verify_many(claimed, [p for _, p in probes]), probes, strict=True
                ):
                    key = "genuine" if owner == claimed else "cross"
                    ok = result.accepted if owner == claimed else not result.accepted
                    counts[key][0] += int(ok)
                    counts[key][1] += 1
            for result, (owner, _) in zip(
                db.identify_many([p for _, p in probes]), probes, strict=True
            ):
                counts["top1"][0] += int(result.best == owner)
                counts["top1"][1] += 1
            for result in db.identify_many(unknown):
                counts["unknown"][0] += int(result.best is None)
                counts["unknown"][1] += 1
            threshold = db.threshold
    rates = {k: (v[0] / v[1] if v[1] else None) for k, v in counts.items()}
    labels = {
        "genuine": "other recordings of enrolled speakers accepted",
        "cross": "cross-speaker probes rejected",
        "top1": "identified as the right speaker (top-1, above threshold)",
        "unknown": "never-enrolled voices answered unknown",
    }
    lines = [f"{args.set}, {args.draws} draws, threshold {threshold:.2f}:"]
    for key, label in labels.items():
        if rates[key] is not None:
            lines.append(f"  {rates[key]:7.2%}  {label} ({counts[key][0]}/{counts[key][1]})")
    emit(
        lines,
        {
            "benchmark": "enrollment_protocol",
            "set": args.set,
            "threshold": threshold,
            "rates": rates,
            "counts": counts,
        },
    )


if __name__ == "__main__":
    main()
